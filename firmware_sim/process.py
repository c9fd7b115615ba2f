"""The simulator as a process: ``qctrace sim`` in a terminal, or a child controlled over stdin.

In control mode (``control=True``) the process speaks JSON lines on stdout and takes one-word
commands on stdin: ``start`` begins simulated time, ``stop`` ends it, writes the ground truth and
reports what was produced, ``quit`` (or end of input, as when the parent dies) shuts everything
down. A parent that is killed therefore never leaves a simulator behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from firmware_sim.opcua_server import ServerSecurity
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import Scenario

log = logging.getLogger(__name__)


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def serve(scenario: Scenario, seed: int, speed: float, truth_dir: Path | None, host: str = "127.0.0.1",
                opcua_port: int = 0, control: bool = False, duration_s: float | None = None,
                announce: Callable[[dict], None] | None = None, dev_dir: Path | None = None,
                processes: bool | None = None, security: ServerSecurity | None = None,
                baudrate: int | None = None, metrics_port: int = 0) -> dict[str, int]:
    """Run the plant until stopped; returns readings produced per source."""
    from qctrace.metrics import SimMetrics
    from qctrace.metrics import serve as serve_metrics

    stop_ticks = asyncio.Event()
    async with SimulatedPlant(scenario, seed, speed, host, opcua_port, processes=processes, dev_dir=dev_dir,
                              security=security, baudrate=baudrate, work_dir=truth_dir) as plant, \
            _metrics(serve_metrics("sim", host, metrics_port)) as registry:
        SimMetrics(registry, plant.produced)
        if control:
            _emit("ready", **plant.endpoints)
            cmd = await _read_command()
            if cmd != "start":
                return {}
        elif announce is not None:
            announce(plant.endpoints)
        ticker = asyncio.create_task(plant.run_ticks(stop_ticks))
        try:
            if control:
                while (cmd := await _read_command()) not in ("stop", "quit"):
                    log.warning("sim.control unknown_command=%r", cmd)
            elif duration_s is not None:
                await asyncio.sleep(duration_s)
            else:
                await asyncio.Event().wait()
        finally:
            stop_ticks.set()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            produced = plant.produced()
            paths = plant.write_truth(truth_dir) if truth_dir is not None else {}
        if control:
            _emit("stopped", produced=produced, truth={k: str(v) for k, v in paths.items()},
                  started_at=getattr(plant, "started_at", None))
            if cmd != "quit":
                # Keep serving so readers can drain what is in flight, until told to quit.
                while await _read_command() != "quit":
                    pass
        return produced


@contextlib.asynccontextmanager
async def _metrics(served: tuple) -> AsyncIterator[Any]:
    server, registry, _health = served
    try:
        yield registry
    finally:
        if server is not None:
            server.stop()


async def _read_command() -> str:
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.strip() if line else "quit"
