"""Time until each dashboard page shows its data in a real browser, on a large dataset.

Runs alone: ``python bench/dashboard.py [--readings N] [--quick]``. Builds (once, cached under
``--cache``) a data directory of N synthetic readings written straight to Parquet in the sink's
layout (``site=/line=/date=/part-*.parquet``, READING_SCHEMA without the partition columns, zstd,
sorted by sensor then time): 10 production lines of 50 sensors at 1 Hz plus a cold-chain
shipment's logger, with sparse flags; and a ledger built with the same library calls the
pipeline uses (lots, QC results, anomaly episodes, a shipment's custody, a signed and anchored
checkpoint). Then it serves the dashboard (``qctrace dashboard``), logs in as the demo admin in
headless Chromium and clicks through every page, timing from the click to the page's data being
drawn, twice: a cold visit (first after the server started) and a warm one.

Baselines measured in the same run: a bare ``st.write`` page served the same way (the floor any
Streamlit page pays), and a DuckDB full scan of the dataset (what one refresh would cost if the
dashboard scanned everything) next to the dashboard's own once-a-second chart query.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# This file is named like the package it measures: keep its own directory off the import path.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ingest.sink import PARTITION_COLUMNS  # noqa: E402
from qctrace.schema import READING_SCHEMA, Flag  # noqa: E402

FILE_SCHEMA = pa.schema([f for f in READING_SCHEMA if f.name not in PARTITION_COLUMNS])
LINES, SENSORS_PER_LINE, SHIPMENT = 10, 50, "SHP-9001"
GTIN = "0614141.107346"
T_END = 1_767_600_000 * 10**9  # 2026-01-05T08:00Z: every dataset of a given size is byte-identical


# ---------------------------------------------------------------- dataset

def _write_chunk(path: Path, sensors: list[str], device: str, t0: int, seconds: int, base: np.ndarray,
                 lot_of: callable, rng: np.random.Generator, seq0: int) -> int:
    """One file: ``seconds`` readings of each sensor from ``t0``, sensor-major (the sink's sort order)."""
    n_s = len(sensors)
    ts = np.tile(t0 + np.arange(seconds, dtype=np.int64) * 10**9, n_s)
    sensor_idx = np.repeat(np.arange(n_s, dtype=np.int32), seconds)
    value = np.repeat(base, seconds) + rng.normal(0, 1, n_s * seconds)
    flags = np.zeros(n_s * seconds, dtype=np.uint32)
    hit = rng.random(n_s * seconds) < 0.001
    flags[hit] = rng.choice([int(Flag.SPEC_HIGH), int(Flag.EWMA_Z), int(Flag.SPIKE)], hit.sum()).astype(np.uint32)
    value[flags == int(Flag.SPEC_HIGH)] += 8
    lots = lot_of(t0)
    table = pa.table({
        "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
        "recv_ts": pa.array(ts + 50_000_000, pa.timestamp("ns", tz="UTC")),
        "device": pa.DictionaryArray.from_arrays(np.zeros(n_s * seconds, np.int32), pa.array([device])),
        "sensor": pa.DictionaryArray.from_arrays(sensor_idx, pa.array(sensors)),
        "value": value,
        "quality": np.zeros(n_s * seconds, dtype=np.uint8),
        "seq": np.arange(seq0, seq0 + n_s * seconds, dtype=np.uint64),
        "lot": pa.DictionaryArray.from_arrays(np.zeros(n_s * seconds, np.int32), pa.array([lots])),
        "flags": flags,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(FILE_SCHEMA), path, compression="zstd", row_group_size=1 << 20)
    return n_s * seconds


def build_readings(root: Path, n: int, chunk_s: int = 3600) -> dict:
    """N readings over 10 lines x 50 sensors plus a shipment logger, one file per line and hour."""
    rng = np.random.default_rng(7)
    per_sensor = max(n // (LINES * SENSORS_PER_LINE), 60)
    t0 = T_END - per_sensor * 10**9
    written, files, seq = 0, 0, 0
    lots = []
    for line in range(1, LINES + 1):
        sensors = sorted(f"s{i:03d}" for i in range(SENSORS_PER_LINE))
        base = rng.uniform(10, 500, len(sensors))
        for start in range(0, per_sensor, chunk_s):
            secs = min(chunk_s, per_sensor - start)
            t = t0 + start * 10**9
            lot = f"L{line:02d}-{start // 7200:05d}"
            if line == 1:
                lots.append(lot)
            day = time.strftime("%Y-%m-%d", time.gmtime(t // 10**9))
            path = root / "site=plant1" / f"line=line{line:02d}" / f"date={day}" / f"part-{t}-{line:02d}.parquet"
            written += _write_chunk(path, sensors, "plc", t, secs, base, lambda _t, lot=lot: lot, rng, seq)
            seq += len(sensors) * secs
            files += 1
    # the shipment's logger: a temperature channel at 1/60 Hz over the whole span, with one excursion
    secs = max(per_sensor // 60, 10)
    ts = t0 + np.arange(secs, dtype=np.int64) * 60 * 10**9
    temp = 5 + rng.normal(0, 0.5, secs)
    temp[secs // 2: secs // 2 + 20] = 11.0
    table = pa.table({
        "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")), "recv_ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
        "device": pa.DictionaryArray.from_arrays(np.zeros(secs, np.int32), pa.array(["logger-01"])),
        "sensor": pa.DictionaryArray.from_arrays(np.zeros(secs, np.int32), pa.array(["temperature"])),
        "value": temp, "quality": np.zeros(secs, np.uint8), "seq": np.arange(secs, dtype=np.uint64),
        "lot": pa.DictionaryArray.from_arrays(np.zeros(secs, np.int32), pa.array([lots[0]])),
        "flags": np.where((temp < 2) | (temp > 8), np.uint32(Flag.BAND_HIGH), np.uint32(0)).astype(np.uint32),
    })
    day = time.strftime("%Y-%m-%d", time.gmtime(t0 // 10**9))
    path = root / "site=coldchain" / f"line={SHIPMENT}" / f"date={day}" / "part-0-shipment.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(FILE_SCHEMA), path, compression="zstd")
    return {"readings": written + secs, "files": files + 1, "lots": lots, "t0": t0}


def build_ledger(data: Path, lots: list[str], t0: int) -> int:
    """A ledger like the demo's, through the library: lots, QC results, episodes, custody, checkpoint, anchor."""
    from ledger import Ledger, events
    from qctrace import ledger_ops
    from qctrace.config import load_config

    cfg = load_config().with_overrides(data_dir=data)
    ledger_ops.init(cfg)
    evs = [events.input_received("TP-0001", "0614141.200018", "Valle Verde Farms", "plant1", t0)]
    for k, lot in enumerate(lots):
        at = t0 + k * 7200 * 10**9
        evs.append(events.lot_produced(lot, GTIN, "plant1", "line01", at, inputs=["urn:epc:class:lgtin:"
                                                                                  "0614141.200018.TP-0001"]))
        evs.append(events.anomaly_episode(lot, GTIN, "plant1/line01/plc/s003", at + 10**11, at + 10**11 + 5 * 10**9,
                                          int(Flag.SPEC_HIGH), "SPEC_HIGH", 520.0, 530.0, 5))
        evs.append(events.qc_result(lot, GTIN, "plant1", "line01", at + 7199 * 10**9, readings=180_000, flagged=180))
    evs += [events.lot_packed(lots[0], GTIN, SHIPMENT, "plant1", t0 + 7200 * 10**9),
            events.logger_attached(SHIPMENT, f"coldchain/{SHIPMENT}/logger-01", "plant1", t0 + 7200 * 10**9),
            events.shipment_moved(SHIPMENT, "truck", "truck-7", t0 + 7300 * 10**9, previous="plant1"),
            events.shipment_moved(SHIPMENT, "store", "store-12", t0 + 9000 * 10**9, previous="truck-7"),
            events.lot_delivered(lots[0], GTIN, SHIPMENT, "FreshMart Store 12", "store-12", t0 + 9000 * 10**9)]
    with Ledger(ledger_ops.ledger_path(data)) as led:
        led.append_many(evs)
    ledger_ops.anchor(cfg)
    return len(evs)


def dataset(cache: Path, n: int) -> tuple[Path, dict]:
    data = cache / f"readings-{n}"
    meta_file = data / "bench.json"
    if meta_file.is_file():
        return data, json.loads(meta_file.read_text())
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    meta = build_readings(data / "readings", n)
    meta["events"] = build_ledger(data, meta["lots"], meta["t0"])
    meta["generate_s"] = round(time.perf_counter() - t, 1)
    meta_file.write_text(json.dumps(meta))
    return data, meta


# ---------------------------------------------------------------- browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def _wait(driver, ready, timeout: float = 60) -> float:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    t = time.perf_counter()
    WebDriverWait(driver, timeout, poll_frequency=0.02,
                  ignored_exceptions=(StaleElementReferenceException,)).until(ready)
    return time.perf_counter() - t


def _has(css: str, text: str = ""):
    from selenium.webdriver.common.by import By

    def ready(d) -> bool:
        els = d.find_elements(By.CSS_SELECTOR, css)
        return bool(els) and (not text or any(text in e.text for e in els))

    return ready


PAGES = {  # nav title -> what "shows its data" means
    "Line quality": _has('[data-testid="stPlotlyChart"] .main-svg'),
    "Cold chain": _has('[data-testid="stMetricValue"]', "°C"),
    "Trace": _has('[data-testid="stGraphVizChart"] svg'),
    "Ledger": _has('[data-testid="stMetricLabel"]', "Signed checkpoints"),
}


def _click_page(driver, title: str) -> float:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//a[@data-testid='stSidebarNavLink'][.//span[@label='{title}']]").click()
    return _wait(driver, lambda d: any(h.text == title for h in d.find_elements(By.TAG_NAME, "h1"))
                 and PAGES[title](d))


def measure_pages(data: Path) -> dict[str, float]:
    from selenium.webdriver.common.by import By

    port = _free_port()
    proc = _serve([sys.executable, "-m", "qctrace", "dashboard", "--data-dir", str(data), "--port", str(port)], port)
    driver = _browser()
    out: dict[str, float] = {}
    try:
        driver.get(f"http://localhost:{port}/")
        _wait(driver, _has('input[aria-label="User name"]'))
        driver.find_element(By.CSS_SELECTOR, 'input[aria-label="User name"]').send_keys("admin")
        driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Password"]').send_keys("admin-demo")
        driver.find_element(By.XPATH, "//button[.//p[text()='Log in']]").click()
        out["line_quality_cold_s"] = _wait(driver, PAGES["Line quality"])
        for visit in ("cold", "warm"):
            for title in PAGES:
                if (visit, title) == ("cold", "Line quality"):
                    continue
                out[f"{title.lower().replace(' ', '_')}_{visit}_s"] = _click_page(driver, title)
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)
    return {k: round(v, 3) for k, v in out.items()}


def measure_bare_page() -> float:
    """The floor: a Streamlit page with one ``st.write``, from navigation to its text on screen."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bare_page.py"
        script.write_text("import streamlit as st\nst.write('bare page ready')\n")
        port = _free_port()
        proc = _serve([sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                       "--server.headless", "true", "--browser.gatherUsageStats", "false"], port)
        driver = _browser()
        try:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                driver.get(f"http://localhost:{port}/")
                _wait(driver, _has('[data-testid="stMarkdownContainer"]', "bare page ready"))
                times.append(time.perf_counter() - t)
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(10)
    return round(min(times), 3)


def measure_queries(data: Path) -> dict[str, float]:
    """The pages' once-a-second queries against the same answers computed by scanning the dataset.

    Status tiles: ``line_overview`` (file footers + only the files reaching into the last minute)
    against one DuckDB query over every file, the way the dashboard computed them before the
    footer catalog. Charts: ``recent_readings`` of one page of six sensors over 120 s.
    """
    import duckdb

    from dashboard import catalog
    from dashboard import data as dd

    root = data / "readings"
    t = time.perf_counter()
    catalog.files(root)  # the footers, once per process
    catalog_s = time.perf_counter() - t
    keys = tuple(f"plant1/line01/plc/s{i:03d}" for i in range(6))

    def p95(fn) -> float:
        times = []
        for _ in range(10):
            st_clear()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(float(np.percentile(times, 95)) * 1e3, 1)

    def st_clear() -> None:
        dd.recent_readings.clear()
        dd.line_overview.clear()

    frame = dd.recent_readings(str(root), "plant1", "line01", 120.0, keys)
    assert len(frame) == 6 * 120, len(frame)
    overview = dd.line_overview(str(root), 60.0)
    con = duckdb.connect()
    con.execute("SET threads = 1")
    sql = """WITH r AS (SELECT site, line, ts, flags FROM read_parquet($g, hive_partitioning = true)),
             m AS (SELECT site, line, count(*) AS readings, max(ts) AS last_ts FROM r GROUP BY site, line)
             SELECT m.site, m.line, any_value(m.readings) AS readings,
                    count(*) FILTER (WHERE r.flags <> 0 AND epoch_ns(r.ts) > epoch_ns(m.last_ts) - 60e9) AS flagged
             FROM r JOIN m ON r.site = m.site AND r.line = m.line GROUP BY ALL ORDER BY ALL"""
    t = time.perf_counter()
    full = con.execute(sql, {"g": str(root / "**" / "*.parquet")}).df()
    full_ms = (time.perf_counter() - t) * 1e3
    assert list(full["flagged"]) == list(overview["flagged_recent"]), (full, overview)  # same answer
    assert list(full["readings"]) == list(overview["readings"])
    return {"catalog_first_read_ms": round(catalog_s * 1e3, 1),
            "status_query_p95_ms": p95(lambda: dd.line_overview(str(root), 60.0)),
            "baseline_full_scan_status_ms": round(full_ms, 1),
            "chart_query_p95_ms": p95(lambda: dd.recent_readings(str(root), "plant1", "line01", 120.0, keys))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readings", type=int, default=50_000_000, help="readings in the dataset (default 50 M)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 k readings, no browser")
    p.add_argument("--no-browser", action="store_true", help="only the dataset and query figures")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "qctrace-bench-dashboard",
                   help="where generated datasets are kept between runs")
    args = p.parse_args()
    n = 100_000 if args.quick else args.readings
    cache = args.cache
    if args.quick:
        cache = Path(tempfile.mkdtemp(prefix="qctrace-bench-dashboard-quick-"))
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    data, meta = dataset(cache, n)
    print(f"dataset: {meta['readings']:,} readings in {meta['files']} files ({data})", file=sys.stderr)
    figures: dict = {"readings": meta["readings"], "files": meta["files"], "ledger_events": meta["events"],
                     "generate_s": meta["generate_s"]}
    figures.update(measure_queries(data))
    if not (args.quick or args.no_browser):
        figures["baseline_bare_page_s"] = measure_bare_page()
        figures.update(measure_pages(data))
        pages = [v for k, v in figures.items() if k.endswith(("_cold_s", "_warm_s"))]
        figures["slowest_page_s"] = max(pages)
    if args.quick:
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
