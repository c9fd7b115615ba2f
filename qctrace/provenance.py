"""Ingest's facts, plus the plant's business context, as ledger events.

Ingest knows readings; the ledger needs business events. What a sensor cannot tell (which product a
line makes and its GTIN, which supplier lots it consumes, where a shipment goes and who receives it)
comes from the scenario, which stands in for the plant's ERP and the carrier's transport system:
a deployment would feed the same constructors from those systems instead. Custody stages are
recorded at their scheduled (simulated) time once the pipeline's data has reached that time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.scenario import COLDCHAIN_SITE, DEFAULT_GTIN, Line, Scenario, Shipment, lines_of, shipments_of
from ingest.alarms import Transition
from ingest.episodes import Episode
from ingest.lots import LotFinished, LotStarted
from ingest.sink import CommittedFile
from ledger import events
from qctrace.errors import InvalidEvent
from qctrace.schema import Gap

log = logging.getLogger(__name__)

_SENSOR_TYPES = {"temperature": ("gs1:Temperature", "CEL"), "humidity": ("gs1:RelativeHumidity", "A93")}


@dataclass
class Provenance:
    """Turns facts into events; remembers what it already said (received input lots, custody stages)."""

    lines: dict[str, Line]
    shipments: dict[str, Shipment]
    start_ns: int
    _received: set[str] = field(default_factory=set)
    _stages_done: dict[str, int] = field(default_factory=dict)
    _now_ns: int = 0
    refused: int = 0  # facts whose event the ledger refused (see events_for)

    @classmethod
    def of(cls, scenario: Scenario) -> Provenance:
        return cls({ln.key: ln for ln in lines_of(scenario)}, {sh.id: sh for sh in shipments_of(scenario)},
                   int(scenario.plant.start.timestamp()) * 1_000_000_000)

    def line_of(self, lot: str) -> Line | None:
        for ln in self.lines.values():
            if lot.startswith(ln.lot_prefix):
                return ln
        return None

    def gtin_of(self, lot: str) -> str:
        ln = self.line_of(lot)
        return ln.gtin if ln else DEFAULT_GTIN

    def units_of(self, lot: str) -> dict[str, Any]:
        ln = self.line_of(lot)
        return {"quantity": ln.units_per_lot, "uom": "EA"} if ln and ln.units_per_lot else {}

    def events_for(self, facts: Sequence[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for f in facts:
            try:
                out += self._events_of(f)
            except InvalidEvent as exc:
                # A fact the ledger cannot express (a lot ID from a device that is no GS1 lot number):
                # its readings are in Parquet verbatim; only this event is refused, loudly, and the
                # other facts of the batch are still recorded.
                self.refused += 1
                log.error("provenance.refused fact=%s error=%s", type(f).__name__, exc)
        out += self.custody_until(self._now_ns)
        return out

    def _events_of(self, f: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if isinstance(f, LotStarted):
            self._now_ns = max(self._now_ns, f.at_ns)
            if f.site == COLDCHAIN_SITE and f.line in self.shipments:
                out += self._shipment_started(self.shipments[f.line], f.at_ns)
            else:
                out += self._lot_started(f)
        elif isinstance(f, LotFinished):
            self._now_ns = max(self._now_ns, f.at_ns)
            out.append(events.qc_result(f.lot, self.gtin_of(f.lot), f.site, f.line, f.at_ns, f.readings,
                                        f.flagged))
        elif isinstance(f, Episode):
            self._now_ns = max(self._now_ns, f.end_ns)
            channel = f.sensor.rsplit("/", 1)[-1]
            stype, unit = _SENSOR_TYPES.get(channel, (None, None)) if f.sensor.startswith(COLDCHAIN_SITE) \
                else (None, None)
            args = (f.sensor, f.start_ns, f.end_ns, f.flags, f.rules, f.min_value, f.max_value, f.readings)
            try:
                out.append(events.anomaly_episode(f.lot, self.gtin_of(f.lot) if f.lot else None, *args, unit=unit,
                                                  sensor_type=stype))
            except InvalidEvent as exc:  # the anomaly is recorded even when its lot ID is no GS1 lot number
                log.error("provenance.episode_without_lot sensor=%s error=%s", f.sensor, exc)
                out.append(events.anomaly_episode(None, None, *args, unit=unit, sensor_type=stype))
        elif isinstance(f, Gap):
            out.append(events.data_gap(f.source, f.start_ns, f.end_ns, f.reason))
        elif isinstance(f, Transition):
            from qctrace.alarm_ops import alarm_events

            out += alarm_events([f], self.gtin_of)
        elif isinstance(f, CommittedFile):
            out.append(events.data_committed(f.path, f.sha256, f.rows, max(self._now_ns, self.start_ns),
                                             replaces=f.replaces))
        return out

    def _lot_started(self, f: LotStarted) -> list[dict[str, Any]]:
        line = self.lines.get(f"{f.site}/{f.line}")
        if line is None:
            return [events.lot_produced(f.lot, DEFAULT_GTIN, f.site, f.line, f.at_ns)]
        out = []
        inputs = []
        number = _lot_number(f.lot, line.lot_prefix)
        for spec in line.inputs:
            lot = f"{spec.lot_prefix}{number // spec.lots_per_input:04d}"
            if lot not in self._received:
                self._received.add(lot)
                out.append(events.input_received(lot, spec.gtin, spec.supplier, f.site, f.at_ns - 1_000_000,
                                                 material=spec.material, quantity=spec.quantity,
                                                 uom=spec.uom if spec.quantity else None))
            inputs.append(events.lot_class(lot, spec.gtin))
        out.append(events.lot_produced(f.lot, line.gtin, f.site, f.line, f.at_ns, inputs=inputs,
                                       equipment=[f"{f.site}/{f.line}/{d}" for d in line.devices],
                                       product=line.product, **self.units_of(f.lot)))
        return out

    def _shipment_started(self, sh: Shipment, at_ns: int) -> list[dict[str, Any]]:
        if sh.id in self._stages_done:
            return []
        self._stages_done[sh.id] = 0
        first = sh.stages[0].location if sh.stages else COLDCHAIN_SITE
        return [events.lot_packed(sh.lot, self.gtin_of(sh.lot), sh.id, first, at_ns, **self.units_of(sh.lot)),
                events.logger_attached(sh.id, f"{COLDCHAIN_SITE}/{sh.id}/{sh.logger}", first, at_ns)]

    def custody_until(self, now_ns: int) -> list[dict[str, Any]]:
        """Custody stages of started shipments whose scheduled time the data has reached."""
        out = []
        for sid, done in self._stages_done.items():
            sh = self.shipments[sid]
            while done < len(sh.stages) and self.start_ns + round(sh.stages[done].at_s * 1e9) <= now_ns:
                st = sh.stages[done]
                at = self.start_ns + round(st.at_s * 1e9)
                prev = sh.stages[done - 1].location if done else None
                out.append(events.shipment_moved(sid, st.stage, st.location, at, previous=prev))
                if done == len(sh.stages) - 1 and sh.customer:
                    out.append(events.lot_delivered(sh.lot, self.gtin_of(sh.lot), sid, sh.customer, st.location, at,
                                                    **self.units_of(sh.lot)))
                done += 1
            self._stages_done[sid] = done
        return out


def _lot_number(lot: str, prefix: str) -> int:
    tail = lot[len(prefix):] if lot.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else 0
