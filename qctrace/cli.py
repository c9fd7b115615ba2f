"""The ``qctrace`` command: thin over the library. Each command loads the configuration, calls one
library function and turns a ``QctraceError`` into a message on stderr and an exit code."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from pathlib import Path

import click

from qctrace.config import Config, load_config
from qctrace.errors import QctraceError

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML configuration file. Default: the shipped demo configuration (qctrace/demo.toml).")
_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where readings (Parquet), the ledger and ground truth live. Default: data_dir from the configuration.")


def _errors(fn):
    """Library errors become one readable line and the error's exit code, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QctraceError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _load(config_path: Path | None, data_dir: Path | None) -> Config:
    return load_config(config_path).with_overrides(data_dir=data_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug, -vvv asyncua too).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="QCTRACE_LOG_FORMAT", help="json: one object per line (ts, level, logger, message, event,"
              " and each key=value field) for log shippers.")
def cli(verbose: int, log_format: str = "text") -> None:
    """qctrace: quality control and traceability for IoT production lines and cold chains.

    Edge readers collect readings from OPC UA PLCs and serial loggers, ingest flags anomalies with
    Numba kernels and writes partitioned Parquet, and a hash-chained ledger records lots, anomaly
    episodes and shipments so auditors can verify them. Start with `qctrace demo`.
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    from qctrace.logs import configure

    configure(level, log_format, sys.stderr)
    # asyncua logs every failed request of a reconnect as an ERROR with a traceback; qctrace logs
    # the outage itself (opcua.lost / opcua.resumed) and records it as a gap.
    logging.getLogger("asyncua").setLevel(logging.DEBUG if verbose >= 3 else logging.CRITICAL)
    # pymodbus logs each unanswered request as an ERROR with a hex dump; edge.modbus counts them and
    # logs one throttled summary (modbus.failed), so a noisy RS-485 line cannot flood the log.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose >= 3 else logging.CRITICAL)


@cli.command()
@_config_option
@_data_dir_option
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Stop by itself after this many seconds. Default: run until Ctrl-C.")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Serve the Streamlit dashboard while the demo runs.")
@click.option("--seed", type=int, default=None, help="Scenario seed (default from the configuration).")
@click.option("--speed", type=click.FloatRange(min=0.1, max=1000), default=None,
              help="Simulated seconds per real second (default from the configuration).")
@_errors
def demo(config_path: Path | None, data_dir: Path | None, duration: float | None, dashboard: bool,
         seed: int | None, speed: float | None) -> None:
    """Run the whole pipeline on the simulated plant.

    Starts an OPC UA line PLC and a cold-chain logger on a pseudo-terminal, reads them over real
    TCP and the real pty, flags anomalies, writes Parquet under DATA_DIR/readings, records lots
    and anomaly episodes in DATA_DIR/ledger.sqlite, and (unless --no-dashboard) serves the
    dashboard on http://localhost:8501. Prints a summary when it stops.
    """
    from qctrace.app import run_demo

    cfg = _load(config_path, data_dir).with_overrides(**{"plant.seed": seed, "plant.speed": speed})
    summary = asyncio.run(run_demo(cfg, duration, dashboard, say=lambda s: click.echo(s, err=True)))
    click.echo("\n".join(summary.lines()))
    if summary.unexplained:
        click.echo(f"error: readings the simulator sent are missing from Parquet with no gap record to explain"
                   f" them: {summary.unexplained}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("scenario", default="demo")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed: same seed, same readings.")
@click.option("--speed", type=click.FloatRange(min=0.1, max=1000), default=1.0, show_default=True,
              help="Simulated seconds per real second.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the OPC UA servers listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="First OPC UA port; line N listens on PORT+N (0 picks free ports).")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many real seconds (with --replay-to: simulated seconds to generate).")
@click.option("--truth-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write ground truth (readings.parquet, labels.parquet) here when stopping.")
@click.option("--dev-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep a stable symlink per logger here (like /dev/serial/by-id), followed across replugs.")
@click.option("--replay-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="No servers: write the readings and labels straight to Parquet in this directory.")
@click.option("--processes/--no-processes", default=None,
              help="One server process per line. Default: yes when the scenario has more than one line.")
@click.option("--secure", is_flag=True, help="Also offer Basic256Sha256, Aes128_Sha256_RsaOaep and"
              " Aes256_Sha256_RsaPss, Sign and SignAndEncrypt (certificates made on first start in --cert-dir).")
@click.option("--cert-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".qctrace-sim-pki"),
              show_default=True, help="Where the servers keep their generated key and certificate.")
@click.option("--publish-cert", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --secure: also copy each server's certificate (never its key) here, e.g. a reader's"
              " trust directory.")
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD",
              help="Require this username/password (repeatable); anonymous logins are then refused.")
@click.option("--baud", type=click.IntRange(min=300), default=None,
              help="Pace logger frames as a real line at this baud rate would (8N1).")
@click.option("--control", is_flag=True, hidden=True, help="Child mode: JSON lines out, commands on stdin.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Serve Prometheus /metrics and /health here (readings produced); 0 = off.")
@_errors
def sim(scenario: str, seed: int, speed: float, host: str, port: int, duration: float | None,
        truth_dir: Path | None, dev_dir: Path | None, replay_to: Path | None, processes: bool | None, secure: bool,
        cert_dir: Path, publish_cert: Path | None, users: tuple[str, ...], baud: int | None, control: bool,
        metrics_port: int = 0) -> None:
    """Run the simulated plant: OPC UA line PLCs and serial loggers, or replay it to Parquet.

    SCENARIO is a shipped scenario name (demo, coldchain, faults, stress) or a path to a scenario
    TOML file. Prints the endpoint URLs and the pty paths, then runs until Ctrl-C or --duration.
    With --replay-to it starts no servers and writes what they would have sent, and the labels.
    """
    from firmware_sim.opcua_server import ServerSecurity
    from firmware_sim.process import serve
    from firmware_sim.scenario import load_scenario

    sc = load_scenario(scenario)
    if replay_to is not None:
        from firmware_sim.replay import replay

        ticks = round((duration or 3600.0) / sc.plant.tick_s)
        with click.progressbar(length=ticks, label="replaying", file=sys.stderr) as bar:
            last = [0]

            def progress(done: int, _total: int) -> None:
                bar.update(done - last[0])
                last[0] = done

            res = replay(sc, seed, replay_to, ticks, progress=progress)
        click.echo(json.dumps({"readings": res.readings, "ticks": res.ticks, "seconds": round(res.seconds, 2),
                               "readings_path": str(res.readings_path), "labels_path": str(res.labels_path)}))
        return
    pairs = []
    for u in users:
        name, sep, pw = u.partition(":")
        if not sep or not name:
            raise click.BadParameter(f"{u!r}: expected NAME:PASSWORD", param_hint="--user")
        pairs.append((name, pw))
    security = ServerSecurity(encrypted=secure, cert_dir=cert_dir, users=tuple(pairs), publish_dir=publish_cert)

    def announce(endpoints: dict) -> None:
        for url in endpoints["opcua"]:
            click.echo(f"OPC UA endpoint: {url}")
        for sid, path in endpoints["serial"].items():
            click.echo(f"logger {sid}: {path}")

    try:
        produced = asyncio.run(serve(sc, seed, speed, truth_dir, host, port, control, duration, announce,
                                     dev_dir=dev_dir, processes=processes, security=security, baudrate=baud,
                                     metrics_port=metrics_port))
    except KeyboardInterrupt:
        return
    if not control:
        click.echo(json.dumps({"produced": produced}))


@cli.command()
@_config_option
@_data_dir_option
@_errors
def init(config_path: Path | None, data_dir: Path | None) -> None:
    """Create the ledger's Ed25519 signing key in DATA_DIR/keys (once; it is never overwritten).

    Prints the public verifier key: give it to auditors, who pass it to `qctrace verify --trusted-key`.
    The demo runs this itself on its first run.
    """
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    click.echo(ledger_ops.init(cfg))


@cli.command()
@_config_option
@_data_dir_option
@_errors
def checkpoint(config_path: Path | None, data_dir: Path | None) -> None:
    """Sign a checkpoint (C2SP tlog-checkpoint, Ed25519) of the ledger's current Merkle root."""
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    size = ledger_ops.checkpoint(cfg)
    click.echo(f"checkpoint signed at size {size}: {ledger_ops.checkpoint_dir(cfg.data_dir)}")


@cli.command()
@_config_option
@_data_dir_option
@_errors
def anchor(config_path: Path | None, data_dir: Path | None) -> None:
    """Sign a checkpoint of the ledger and anchor its root on an Ethereum-compatible chain.

    Default chain: eth-tester's in-process EVM kept in DATA_DIR/chain (nothing to install). Set
    [ledger.anchor] rpc_url and the private key's environment variable to use a real node.
    """
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    size, r = ledger_ops.anchor(cfg)
    click.echo(f"checkpoint at size {size} anchored: chain {r.chain_id}, block {r.block_number}, tx {r.tx_hash}")


@cli.command()
@_config_option
@_data_dir_option
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="VKEY",
              help="Verifier key (name+id+key) to trust instead of the keys in DATA_DIR/keys. Repeatable.")
@click.option("--checkpoint", "checkpoint_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A signed checkpoint you kept from earlier: the ledger must still contain it. Repeatable.")
@click.option("--anchors/--no-anchors", default=True, show_default=True, help="Check anchors on the chain.")
@click.option("--data/--no-data", default=True, show_default=True,
              help="Check Parquet files against the SHA-256 the ledger recorded.")
@_errors
def verify(config_path: Path | None, data_dir: Path | None, trusted_keys: tuple[str, ...],
           checkpoint_files: tuple[Path, ...], anchors: bool, data: bool) -> None:
    """Verify the ledger end to end, offline.

    Checks the hash chain and every event's bytes, the Merkle tree, every signed checkpoint (a
    trusted key, and the ledger not rolled back below it), every anchor on the chain, and every
    Parquet file's SHA-256. Exits 0 when all hold; exits 3 and names the first bad event (or
    checkpoint, anchor, file) and what is wrong otherwise.
    """
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    extra = [p.read_bytes() for p in checkpoint_files]
    bars: dict[str, object] = {}

    def progress(step: str, done: int, total: int) -> None:
        if step not in bars:
            for b in bars.values():
                b.render_finish()
            bars.clear()
            bars[step] = click.progressbar(length=max(total, 1), label=f"verifying {step:<11}", file=sys.stderr)
            bars[step].last = 0
        bar = bars[step]
        bar.update(done - bar.last)
        bar.last = done

    report = ledger_ops.verify(cfg, trusted_keys, extra, anchors=anchors, data=data, progress=progress)
    for b in bars.values():
        b.render_finish()
    for line in report.lines():
        click.echo(line)


@cli.command()
@click.argument("lot")
@_config_option
@_data_dir_option
@click.option("--backward", "direction", flag_value="backward", help="Only where the lot came from.")
@click.option("--forward", "direction", flag_value="forward", help="Only where the lot went.")
@_errors
def trace(lot: str, config_path: Path | None, data_dir: Path | None, direction: str | None) -> None:
    """Trace LOT through the ledger: inputs, suppliers, lines and equipment (backward); shipments,
    places, customers and downstream lots (forward); with its events and a readings summary."""
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    report = ledger_ops.trace_lot(cfg, lot, backward=direction != "forward", forward=direction != "backward")
    for line in report.lines():
        click.echo(line)


@cli.command()
@click.argument("lot")
@click.option("--by", required=True, help="Who orders the recall (recorded in the ledger).")
@click.option("--reason", required=True, help="Why (recorded in the ledger).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the scope and exports go. Default: DATA_DIR/recalls/LOT.")
@_config_option
@_data_dir_option
@_errors
def recall(lot: str, by: str, reason: str, out_dir: Path | None, config_path: Path | None,
           data_dir: Path | None) -> None:
    """Recall LOT: compute every lot, shipment, place and customer downstream of it, record the
    recall in the ledger (signed into a new checkpoint), and export the scope with the FSMA 204
    spreadsheet (CSV and XLSX) and an EPCIS 2.0 document."""
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    for line in ledger_ops.recall(cfg, lot, by, reason, out_dir).lines():
        click.echo(line)


@cli.command()
@click.option("--lot", default=None, help="Only this lot's readings.")
@click.option("--sensor", default=None, metavar="GLOB",
              help="Only sensors whose site/line/device/sensor key matches, e.g. '*/seal_temp'.")
@click.option("--from", "start", default=None, metavar="TIME", help="First time, ISO 8601 (UTC without offset).")
@click.option("--to", "end", default=None, metavar="TIME", help="Last time, ISO 8601 (inclusive).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True,
              help="Output format.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file. Default: CSV to stdout (Parquet needs --out).")
@_config_option
@_data_dir_option
@_errors
def readings(lot: str | None, sensor: str | None, start: str | None, end: str | None, fmt: str, out: Path | None,
             config_path: Path | None, data_dir: Path | None) -> None:
    """Export readings with their flags from the Parquet dataset, for a lot, a sensor and/or a time
    range, as CSV or Parquet (DuckDB over the Hive-partitioned files; ingest is never slowed)."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from ingest.query import select_readings
    from qctrace.ledger_ops import READINGS_DIR

    if lot is None and sensor is None and start is None and end is None:
        raise click.UsageError("say what to export: --lot, --sensor, --from/--to (or several)")
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    cfg = _load(config_path, data_dir)
    table = select_readings(cfg.data_dir / READINGS_DIR, lot, sensor, start, end)
    if table.num_rows == 0:
        click.echo("no readings match", err=True)
        sys.exit(1)
    if fmt == "parquet":
        pq.write_table(table, out, compression="zstd")
    elif out is None:
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        click.echo(buf.getvalue().decode("utf-8"), nl=False)
    else:
        pacsv.write_csv(table, out)
    if out is not None:
        click.echo(f"{out}: {table.num_rows} readings", err=True)


@cli.group()
def export() -> None:
    """Export the ledger for regulators, partners and auditors."""


@export.command("epcis")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--lot", default=None, help="Only this lot's genealogy (backward and forward). Default: everything.")
@_config_option
@_data_dir_option
@_errors
def export_epcis(out: Path, lot: str | None, config_path: Path | None, data_dir: Path | None) -> None:
    """Write an EPCIS 2.0 JSON-LD document to OUT, validated against the GS1 EPCIS 2.0 JSON schema;
    every event carries its CBV 2.0 event hash as eventID."""
    from qctrace import ledger_ops

    n = ledger_ops.export_epcis(_load(config_path, data_dir), out, lot)
    click.echo(f"{out}: {n} EPCIS events")


@export.command("fsma")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--lot", default=None, help="Only this lot's genealogy. Default: every lot.")
@click.option("--from", "start", default=None, metavar="YYYY-MM-DD", help="First date (inclusive).")
@click.option("--to", "end", default=None, metavar="YYYY-MM-DD", help="Last date (inclusive).")
@_config_option
@_data_dir_option
@_errors
def export_fsma(out: Path, lot: str | None, start: str | None, end: str | None, config_path: Path | None,
                data_dir: Path | None) -> None:
    """Write the FDA FSMA 204 electronic sortable spreadsheet to OUT: one row per critical tracking
    event with its key data elements. OUT ending in .xlsx gives Excel, anything else CSV."""
    from qctrace import ledger_ops

    n = ledger_ops.export_fsma(_load(config_path, data_dir), out, lot, start, end)
    click.echo(f"{out}: {n} critical tracking events")


@export.command("bundle")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--lot", default=None, help="Only this lot's trace events, each with an inclusion proof.")
@_config_option
@_data_dir_option
@_errors
def export_bundle(out: Path, lot: str | None, config_path: Path | None, data_dir: Path | None) -> None:
    """Write an audit bundle (zip) to OUT: events, signed checkpoints, Merkle proofs, anchor receipts,
    the public keys and verify_bundle.py, which checks it all offline with Python and `cryptography`."""
    from qctrace import ledger_ops

    s = ledger_ops.export_bundle(_load(config_path, data_dir), out, lot)
    sizes = ", ".join(map(str, s.checkpoints))
    click.echo(f"{out}: {s.events} events, checkpoints at sizes {sizes}, {s.anchors} anchors"
               + (f"; {len(s.unproven)} events newer than the last checkpoint left out" if s.unproven else ""))
    click.echo(f"verify it anywhere: unzip {out.name} -d bundle && python bundle/verify_bundle.py bundle"
               " --trusted-key KEY")


@cli.group()
def keys() -> None:
    """The ledger's signing key: show the public key, rotate."""


@keys.command("public")
@_config_option
@_data_dir_option
@_errors
def keys_public(config_path: Path | None, data_dir: Path | None) -> None:
    """Print the public verifier keys (current first, then retired ones) for auditors."""
    from ledger.keys import load_verifiers
    from qctrace import ledger_ops

    for v in load_verifiers(ledger_ops.keys_dir(_load(config_path, data_dir).data_dir)):
        click.echo(str(v))


@keys.command("rotate")
@_config_option
@_data_dir_option
@_errors
def keys_rotate(config_path: Path | None, data_dir: Path | None) -> None:
    """Replace the signing key. Old checkpoints stay verifiable: the retired public key is kept."""
    from ledger.keys import rotate
    from qctrace import ledger_ops

    cfg = _load(config_path, data_dir)
    click.echo(rotate(ledger_ops.keys_dir(cfg.data_dir), cfg.ledger.key_name))


@cli.command()
@_config_option
@_data_dir_option
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default from the configuration).")
@_errors
def dashboard(config_path: Path | None, data_dir: Path | None, port: int | None) -> None:
    """Serve the Streamlit dashboard over an existing data directory (read-only)."""
    from qctrace.app import serve_dashboard

    cfg = _load(config_path, data_dir)
    if not cfg.dashboard.auth.users:
        click.echo("warning: no [dashboard.auth.users] in the configuration: nobody can log in"
                   " (add one with `qctrace users hash-password`)", err=True)
    serve_dashboard(cfg.data_dir, port or cfg.dashboard.port, cfg.dashboard.address, config_path)


@cli.group()
def users() -> None:
    """Dashboard users: make password hashes for [dashboard.auth.users] in the configuration."""


@users.command("hash-password")
@click.option("--name", default=None, help="Also print the TOML table for this user name.")
@click.option("--role", type=click.Choice(["technician", "compliance", "admin"]), default="technician",
              show_default=True, help="Role for the printed TOML table (with --name).")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The password (prompted for, hidden, when not given; prefer the prompt: a command line"
              " is visible to other users of the machine).")
def users_hash_password(name: str | None, role: str, password: str) -> None:
    """Print an scrypt hash of a password for [dashboard.auth.users.NAME] password_hash.

    The password itself is never printed or logged; only the salted hash is.
    """
    from dashboard.auth import hash_password

    if not password:
        raise click.BadParameter("the password is empty", param_hint="--password")
    digest = hash_password(password)
    if name is None:
        click.echo(digest)
    else:
        click.echo(f'[dashboard.auth.users.{name}]\nrole = "{role}"\npassword_hash = "{digest}"')


@cli.group()
def alarms() -> None:
    """ISA-18.2 alarms raised from anomaly episodes, cold-chain excursions and data gaps.

    Every acknowledgement, shelving and unshelving is a ledger event carrying --by.
    """


def _alarm_line(v) -> str:
    import datetime as dt

    t = dt.datetime.fromtimestamp(v.raised_ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    extra = f"  acked by {v.acked_by}" if v.acked_by else ""
    if v.shelved_until_ns:
        extra += "  shelved until " + dt.datetime.fromtimestamp(v.shelved_until_ns / 1e9, dt.UTC).strftime(
            "%Y-%m-%d %H:%M:%S")
    return f"{v.id}  {v.state:<14} {v.priority:<8} {t}  {v.message}{extra}"


def _duration_s(text: str) -> float:
    import re

    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not m or not any(m.groups()):
        raise click.BadParameter(f"{text!r}: write a duration like 2h, 30m, 90s or 1h30m")
    h, mi, s = (float(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


@alarms.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also alarms that returned to normal and were acknowledged.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alarm.")
@_config_option
@_data_dir_option
@_errors
def alarms_list(show_all: bool, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Alarms needing attention: unacknowledged first, then by priority, newest first."""
    import dataclasses

    from qctrace.alarm_ops import list_alarms

    views = list_alarms(_load(config_path, data_dir), active_only=not show_all)
    for v in views:
        click.echo(json.dumps(dataclasses.asdict(v)) if as_json else _alarm_line(v))
    if not views and not as_json:
        click.echo("no alarms" + ("" if show_all else " needing attention (--all shows every alarm)"))


_by_option = click.option("--by", "user", required=True, help="Your name: recorded in the ledger with the change.")
_comment_option = click.option("--comment", default="", help="Why (recorded in the ledger).")


@alarms.command("ack")
@click.argument("alarm_id")
@_by_option
@_comment_option
@_config_option
@_data_dir_option
@_errors
def alarms_ack(alarm_id: str, user: str, comment: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Acknowledge alarm ALARM_ID, recorded in the ledger with --by (acknowledging again changes nothing)."""
    from qctrace.alarm_ops import acknowledge

    click.echo(_alarm_line(acknowledge(_load(config_path, data_dir), alarm_id, user, comment)))


@alarms.command("shelve")
@click.argument("alarm_id")
@click.option("--for", "for_", required=True, metavar="DURATION", help="How long, e.g. 2h, 30m, 1h30m.")
@_by_option
@_comment_option
@_config_option
@_data_dir_option
@_errors
def alarms_shelve(alarm_id: str, for_: str, user: str, comment: str, config_path: Path | None,
                  data_dir: Path | None) -> None:
    """Shelve alarm ALARM_ID for a while; it comes back by itself when the time is up."""
    import time as _time

    from qctrace.alarm_ops import shelve

    until = _time.time_ns() + round(_duration_s(for_) * 1e9)
    click.echo(_alarm_line(shelve(_load(config_path, data_dir), alarm_id, user, until, comment)))


@alarms.command("unshelve")
@click.argument("alarm_id")
@_by_option
@_config_option
@_data_dir_option
@_errors
def alarms_unshelve(alarm_id: str, user: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Unshelve alarm ALARM_ID before its shelving ends, recorded in the ledger with --by."""
    from qctrace.alarm_ops import unshelve

    click.echo(_alarm_line(unshelve(_load(config_path, data_dir), alarm_id, user)))


def _bar(label: str):
    """A progress callback (step, done, total) drawing one click progress bar on stderr."""
    state: dict = {}

    def progress(step: str, done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
            state["done"] = 0
        state["bar"].update(done - state["done"])
        state["done"] = done
        if done >= total:
            state["bar"].render_finish()

    return progress


@cli.command()
@_config_option
@_data_dir_option
@_errors
def compact(config_path: Path | None, data_dir: Path | None) -> None:
    """Merge each partition's small Parquet files into larger ones (safe while ingest and queries run).

    Readers never see a row missing or twice: the new file replaces the old ones in one atomic
    commit-record update, and the old files stay for [sink] retired_grace_s seconds for readers
    holding an older snapshot. Each new file goes to the ledger as a data_committed event naming
    the files it replaces. Settings: [sink] compact_min_files, compact_target_rows.
    """
    from qctrace import sink_ops

    res = sink_ops.run_compaction(_load(config_path, data_dir), progress=_bar("compacting"))
    for line in res.lines():
        click.echo(line)


@cli.command()
@_config_option
@_data_dir_option
@click.option("--dry-run", is_flag=True, help="Only list what would be dropped.")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Keep this many days. Default: [sink] retention_days from the configuration.")
@_errors
def retention(config_path: Path | None, data_dir: Path | None, dry_run: bool, days: int | None) -> None:
    """Drop partitions older than the retention age, except those holding lots on hold or recalled.

    Held and recalled lots (lot_held / lot_recalled in the ledger, no later lot_released) keep their
    partitions whatever their age. What is dropped is listed in a manifest recorded in the ledger,
    so `qctrace verify` knows those files are gone on purpose.
    """
    from qctrace import sink_ops

    res = sink_ops.run_retention(_load(config_path, data_dir), dry_run, days, progress=_bar("dropping"))
    for line in res.lines():
        click.echo(line)


@cli.command()
@click.argument("lot")
@click.option("--format", "fmt", type=click.Choice(["html", "pdf"]), default="html", show_default=True,
              help="Self-contained HTML page, or PDF.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it. Default: DATA_DIR/reports/LOT.html (or .pdf).")
@_config_option
@_data_dir_option
@_errors
def report(lot: str, fmt: str, out: Path | None, config_path: Path | None, data_dir: Path | None) -> None:
    """The lot quality report of LOT: control charts, capability (Cp, Cpk, Pp, Ppk with confidence
    intervals), first-pass yield, anomaly episodes, alarms, and each ledger event's inclusion proof
    against the latest signed checkpoint."""
    from qctrace.report import write_report

    click.echo(write_report(_load(config_path, data_dir), lot, fmt, out))


@cli.command()
@click.option("--lot", default=None, help="Only this lot. Default: every sensor over all its readings, and per lot.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True,
              help="Level of the confidence intervals.")
@_config_option
@_data_dir_option
@_errors
def capability(lot: str | None, confidence: float, config_path: Path | None, data_dir: Path | None) -> None:
    """Process capability of every sensor with specification limits, per line, per sensor and per lot,
    and the first-pass yield of each lot (see ingest/capability.py for the definitions)."""
    from ingest.capability import capability_rows, first_pass_yield, line_capability, lot_yields
    from qctrace.ledger_ops import READINGS_DIR

    cfg = _load(config_path, data_dir)
    root = cfg.data_dir / READINGS_DIR

    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    def ci(c):
        return "-" if c is None else f"{c.low:.2f}..{c.high:.2f}"

    click.echo(f"{'sensor':<36} {'lot':<20} {'n':>7} {'Cp':>6} {'Cp CI':>11} {'Cpk':>6} {'Cpk CI':>11}"
               f" {'Pp':>6} {'Ppk':>6}")
    rows = capability_rows(root, cfg.detect, lot=lot, confidence=confidence)
    for r in rows:
        c = r.cap
        click.echo(f"{r.sensor:<36} {r.lot or '(all)':<20} {c.n:>7} {f(c.cp):>6} {ci(c.cp_ci):>11} {f(c.cpk):>6}"
                   f" {ci(c.cpk_ci):>11} {f(c.pp):>6} {f(c.ppk):>6}")
    for lc in line_capability(rows):
        click.echo(f"line {lc.line}: Cpk {f(lc.cpk)} (weakest: {lc.weakest_cpk_sensor}), Ppk {f(lc.ppk)}"
                   f" (weakest: {lc.weakest_ppk_sensor}), {lc.sensors} sensors with limits")
    yields = lot_yields(root, cfg.detect, lot=lot)
    for line in sorted({y.line for y in yields}):
        ys = [y for y in yields if y.line == line]
        click.echo(f"first-pass yield {line}: {first_pass_yield(ys):.3f} ({sum(y.first_pass for y in ys)} of"
                   f" {len(ys)} lots with no flagged or out-of-specification reading)")


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@_data_dir_option
@_errors
def edge(config_path: Path, data_dir: Path | None) -> None:
    """Run this machine's edge node: read its PLCs and loggers, spool, forward over MQTT.

    Reads the OPC UA servers in edge.opcua_endpoints and the ports in [[edge.serial.devices]];
    every batch is written to the spool under DATA_DIR/edge/NODE before it is sent, and leaves it
    only when ingest has committed it. Stop with Ctrl-C or SIGTERM: what is not yet committed
    stays spooled and is sent on the next start.
    """
    from qctrace.edge_node import run_edge

    cfg = _load(config_path, data_dir)
    asyncio.run(run_edge(cfg, say=click.echo))


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@_data_dir_option
@click.option("--worker", default="w1", show_default=True,
              help="This worker's name (letters, digits, '_', '.'): its MQTT client id and its name as a writer of"
                   " the dataset. Each worker of one data directory needs its own.")
@_errors
def ingest(config_path: Path, data_dir: Path | None, worker: str) -> None:
    """Run an ingest worker: MQTT payloads → detection → Parquet and the ledger.

    Several workers on one data directory share the edge nodes out evenly: each node's readings
    go to one worker at a time (shared subscription $share/GROUP/PREFIX/+/+/NODE/readings), and a
    node moves to another worker only after a commit, or when its worker dies. Readings are
    committed to DATA_DIR/readings and each batch is acknowledged to its edge node only after the
    commit. Payloads it cannot decode go to DATA_DIR/quarantine with the reason.
    """
    from qctrace.ingest_worker import run_ingest

    cfg = _load(config_path, data_dir)
    asyncio.run(run_ingest(cfg, worker, say=click.echo))


@cli.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_data_dir_option
@click.option("--duration", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Stop after this long (default: run until Ctrl-C or SIGTERM).")
@_errors
def run(config_path: Path | None, data_dir: Path | None, duration: float | None) -> None:
    """Run the distributed pipeline on this machine: broker, plant, edge nodes, ingest workers.

    The [run] table says what to start: a private Mosquitto (broker = "local") or the broker in
    [mqtt]; the simulated plant ([plant]) with its devices dealt out among `edges` edge nodes, or
    one configuration file per edge node (edge_configs); and `workers` ingest workers sharing one
    dataset and one ledger in DATA_DIR. Each runs as its own process (logs in DATA_DIR/run/logs);
    one that exits is started again with backoff. Ctrl-C stops the edges first, then ingest, so
    everything read is committed.
    """
    from qctrace.topology import run_topology

    cfg = _load(config_path, data_dir)
    out = run_topology(cfg, duration_s=duration, say=click.echo)
    if out.get("restarts"):
        click.echo("restarted: " + ", ".join(f"{k} ×{v}" for k, v in sorted(out["restarts"].items())))


@alarms.command("out-of-service")
@click.argument("alarm_id")
@_by_option
@_comment_option
@_config_option
@_data_dir_option
@_errors
def alarms_out_of_service(alarm_id: str, user: str, comment: str, config_path: Path | None,
                          data_dir: Path | None) -> None:
    """Take alarm ALARM_ID out of service (maintenance), recorded in the ledger with --by."""
    from qctrace.alarm_ops import remove_from_service

    click.echo(_alarm_line(remove_from_service(_load(config_path, data_dir), alarm_id, user, comment)))


@alarms.command("in-service")
@click.argument("alarm_id")
@_by_option
@_comment_option
@_config_option
@_data_dir_option
@_errors
def alarms_in_service(alarm_id: str, user: str, comment: str, config_path: Path | None,
                      data_dir: Path | None) -> None:
    """Return alarm ALARM_ID to service after maintenance, recorded in the ledger with --by."""
    from qctrace.alarm_ops import return_to_service

    click.echo(_alarm_line(return_to_service(_load(config_path, data_dir), alarm_id, user, comment)))


@cli.command()
@_config_option
@_data_dir_option
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="A process's metrics address (http://host:port), repeatable. Default: the ports in [metrics].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_errors
def status(config_path: Path | None, data_dir: Path | None, urls: tuple[str, ...], as_json: bool) -> None:
    """Health of the running deployment: one row per process, what is wrong in words.

    Asks each process's /health endpoint; when none answers, shows what the data directory says
    (last commit, spools on disk, ledger size, last checkpoint and anchor). Exit status 1 when a
    process reports "down", or when a --url given does not answer.
    """
    from qctrace import status as st

    cfg = _load(config_path, data_dir)
    targets = {u: u for u in urls} if urls else st.configured_urls(cfg)
    rows = [st.probe(name, url) for name, url in targets.items()]
    running = [r for r in rows if r.status != "not running"]
    data = None if running and not data_dir else st.data_dir_view(cfg.data_dir.resolve())
    if as_json:
        click.echo(json.dumps(st.as_json(rows, data), indent=1))
    else:
        click.echo(st.table(rows))
        if not running:
            click.echo("nothing answers: no qctrace process runs with metrics on these ports")
        if data:
            click.echo("")
            for k, v in data:
                click.echo(f"{k + ':':<17} {v}")
    sys.exit(st.exit_code(rows, explicit=bool(urls)))


@cli.command()
@click.option("--duration", type=click.FloatRange(min=1), default=1800.0, show_default=True,
              help="Seconds of faults per seed.")
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated seeds; one run each.")
@click.option("--faults", default="kill_ingest,kill_edge,crash_broker,fill_spool_disk,restart_plc,unplug_logger,"
              "skew_clock",
              show_default=True,
              help="Which faults to inject. PLC restarts, logger unplugs and clock skews are scheduled in the"
                   " simulator; fill_spool_disk needs root (edge1's spool goes on a 64 MiB tmpfs), else it is skipped"
                   " and the table says so.")
@click.option("--scenario", default="demo", show_default=True, help="Simulator scenario (e.g. stress: 10,000 tags).")
@click.option("--speed", type=click.FloatRange(min=0.1, max=1000), default=20.0, show_default=True,
              help="Simulated seconds per real second.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Mean seconds between faults.")
@click.option("--edges", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Edge node processes; the plant's devices are dealt out among them.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Ingest worker processes sharing the edge nodes (one dataset, one ledger).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("campaign-data"),
              show_default=True, help="Where each seed's data, broker state and process logs go.")
@_errors
def campaign(duration: float, seeds: str, faults: str, scenario: str, speed: float, interval: float,
             edges: int, workers: int, work_dir: Path) -> None:
    """Run the distributed pipeline under random faults and check it against ground truth.

    Starts the simulated plant, a private Mosquitto, `qctrace edge` and `qctrace ingest`; kills and
    restarts them (and crashes the broker) at random instants; then compares, per source, what the
    simulator sent with Parquet and verifies the ledger. Prints one table per seed; exit code 1 if
    any reading is missing without a gap record, written twice (the same seq, or the same sample
    under two seqs), the ledger does not verify, or (runs of 10 minutes or more) an edge's or
    the ingest workers' memory (judged together: roles move between them), a process's
    descriptors, a spool or the Parquet file count keeps growing.
    """
    from qctrace.campaign import run_campaign

    ok = True
    for seed in (int(x) for x in seeds.split(",") if x.strip()):
        click.echo(f"seed {seed}: {duration:g} s of faults on the {scenario} scenario")
        res = run_campaign(work_dir / f"seed-{seed}", seed=seed, duration_s=duration,
                           faults=tuple(f.strip() for f in faults.split(",") if f.strip()), scenario=scenario,
                           speed=speed, mean_interval_s=interval, edges=edges, workers=workers, say=click.echo)
        click.echo("\n".join(res.lines()))
        ok &= res.ok
    sys.exit(0 if ok else 1)


def main() -> None:
    cli(prog_name="qctrace")
