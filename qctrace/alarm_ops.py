"""Alarm operations behind the CLI and the dashboard: list, acknowledge, shelve, unshelve.

The ledger is the alarm store. Ingest appends ``alarm_raised`` / ``alarm_cleared``; operators
append ``alarm_acknowledged`` / ``alarm_shelved`` / ... with their name. The current state of every
alarm is those events replayed in ledger order through ``ingest.alarms.apply``, so two processes
(the pipeline clearing, an operator acknowledging) never overwrite each other's change, and every
state shown is backed by signed, hash-chained events.

``AlarmFeed`` is the pipeline's side: ``record(facts)`` in ``qctrace.app`` passes ingest's facts
through it and gets the alarm transitions to record (and notify) added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.alarms import Action, Alarm, AlarmEngine, Condition, State, Transition, apply, parse_iso
from ingest.episodes import Episode, EpisodeOpened
from ledger import Ledger
from ledger import events as ev_mod
from qctrace.config import Config
from qctrace.errors import AlarmError, QctraceError
from qctrace.ledger_ops import ledger_path
from qctrace.schema import Gap

log = logging.getLogger(__name__)

_KIND_OF = {a: f"alarm_{a.value}" for a in Action}
_ACTION_OF = {k: a for a, k in _KIND_OF.items()}


@dataclass(frozen=True, slots=True)
class AlarmView:
    id: str  # stable id of the alarm (one per episode/excursion)
    site: str
    line: str
    sensor: str  # full key site/line/device/sensor
    rule: str  # e.g. "spec", "ewma", "cusum", "spike", "stuck", "gap", "excursion", "door"
    priority: str  # "critical" | "high" | "medium" | "low"
    state: str  # "UNACK_ACTIVE" | "ACK_ACTIVE" | "UNACK_RTN" | "NORMAL" | "SHELVED" | "OUT_OF_SERVICE"
    raised_ns: int
    cleared_ns: int | None
    message: str  # plain text, never HTML
    acked_by: str | None
    shelved_until_ns: int | None
    # additions beyond the shared interface
    lot: str | None = None
    members: tuple[str, ...] = ()  # "sensor rule" of each episode grouped into this alarm
    episodes: int = 1  # episodes merged into it (chattering, grouping)

    @classmethod
    def of(cls, a: Alarm, now_ns: int) -> AlarmView:
        return cls(a.id, a.site, a.line, a.sensor, a.rule, a.priority, a.state(now_ns).value, a.raised_ns,
                   a.cleared_ns, a.message, a.acked_by, a.shelved_until_ns if a.state(now_ns) is State.SHELVED
                   else None, a.lot, a.members, a.episodes)


def alarm_events(transitions: Sequence[Transition], gtin_of: Callable[[str], str] | None = None,
                 now_ns: int | None = None) -> list[dict[str, Any]]:
    """Ledger events of alarm transitions; the raise names the alarm's lot (with its GTIN) so trace finds it."""
    out = []
    for t in transitions:
        lot = t.alarm.lot if t.action is Action.RAISE and gtin_of is not None else None
        out.append(ev_mod.alarm_event(_KIND_OF[t.action], t.alarm.record(t.at_ns if now_ns is None else now_ns),
                                      t.by, t.at_ns, lot=lot, gtin=gtin_of(lot) if lot else None,
                                      comment=t.comment))
    return out


def fold(led: Ledger, now_ns: int) -> dict[str, Alarm]:
    """Every alarm's current state, replayed from the ledger's alarm events in order."""
    stored = sorted((e for k in ev_mod.ALARM_KINDS for e in led.events(kind=k)), key=lambda e: e.idx)
    alarms: dict[str, Alarm] = {}
    for e in stored:
        d = e.as_dict()
        rec = d[f"{ev_mod.NS}:alarm"]
        action = _ACTION_OF[e.kind]
        at = parse_iso(d["eventTime"])
        a = alarms.get(rec["id"])
        if a is None:
            if action is not Action.RAISE:
                log.warning("alarms.orphan_event idx=%d id=%s kind=%s", e.idx, rec["id"], e.kind)
                continue
            alarms[rec["id"]] = Alarm.from_record(rec)
            continue
        until = parse_iso(rec["shelved_until"]) if action is Action.SHELVE and rec.get("shelved_until") else None
        try:
            a = apply(a, action, at, d.get(f"{ev_mod.NS}:by", "?"), until)
        except AlarmError as exc:  # recorded by a racing writer; the ledger keeps it, the state ignores it
            log.warning("alarms.ignored_event idx=%d %s", e.idx, exc)
            continue
        if action is Action.CLEAR:  # the pipeline's final word on what the alarm grouped
            a = Alarm(**{**_fields(a), "members": tuple(rec.get("members") or a.members),
                         "episodes": int(rec.get("episodes", a.episodes))})
        alarms[rec["id"]] = a
    return alarms


def _fields(a: Alarm) -> dict[str, Any]:
    return {f: getattr(a, f) for f in Alarm.__dataclass_fields__}


_STATE_ORDER = {s: i for i, s in enumerate((State.UNACK_ACTIVE, State.UNACK_RTN, State.ACK_ACTIVE, State.SHELVED,
                                            State.OUT_OF_SERVICE, State.NORMAL))}
_PRIO_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def list_alarms(cfg: Config, *, active_only: bool = False) -> list[AlarmView]:
    """Alarms newest first within (state: unacknowledged first, normal last; then priority).
    ``active_only``: leave out NORMAL ones (returned to normal and acknowledged)."""
    now = time.time_ns()
    path = ledger_path(cfg.data_dir)
    if not path.exists():
        return []
    with Ledger(path, readonly=True) as led:
        alarms = fold(led, now)
    views = [AlarmView.of(a, now) for a in alarms.values()]
    if active_only:
        views = [v for v in views if v.state != State.NORMAL.value]
    views.sort(key=lambda v: (_STATE_ORDER[State(v.state)], _PRIO_ORDER.get(v.priority, 9), -v.raised_ns))
    return views


def _change(cfg: Config, alarm_id: str, action: Action, user: str, comment: str = "",
            until_ns: int | None = None) -> AlarmView:
    user = (user or "").strip()
    if not user:
        raise AlarmError("say who you are (--by NAME): every alarm state change is recorded with its user")
    now = time.time_ns()
    path = ledger_path(cfg.data_dir)
    if not path.exists():
        raise AlarmError(f"no alarm {alarm_id!r}: no ledger at {path} (check --data-dir)")
    with Ledger(path) as led:
        alarms = fold(led, now)
        a = alarms.get(alarm_id)
        if a is None:
            close = [i for i in alarms if i.startswith(alarm_id)] if alarm_id else []
            hint = f"; did you mean {close[0]}?" if len(close) == 1 else "; `qctrace alarms list` shows the ids"
            raise AlarmError(f"no alarm {alarm_id!r} in {path}{hint}")
        after = apply(a, action, now, user, until_ns)
        t = Transition(after, action, now, user, comment)
        if after is not a:
            led.append_many(alarm_events([t]))
            log.info("alarms.%s id=%s by=%s", action.value, alarm_id, user)
    if after is not a:
        _tell_channels(cfg, t)
    return AlarmView.of(after, now)


def _tell_channels(cfg: Config, t: Transition, timeout_s: float = 5.0) -> None:
    """An operator's change goes to the same channels as the pipeline's (so a retained MQTT topic
    never shows an acknowledged alarm as unacknowledged), waiting at most ``timeout_s``: the change
    is already in the ledger, a slow channel only delays or loses its message."""
    from qctrace.notify import Notifier

    if not cfg.alarms.enabled:
        return
    try:
        notifier = Notifier.from_config(cfg.alarms)
    except QctraceError as exc:  # e.g. a secret file with loose permissions: the change stands, say why
        log.warning("alarms.notify_unavailable error=%s", exc)
        return
    if notifier is not None:
        notifier.submit(t)
        notifier.close(timeout_s)


def acknowledge(cfg: Config, alarm_id: str, user: str, comment: str = "") -> AlarmView:
    """Acknowledge; a second acknowledgement changes nothing and records nothing."""
    return _change(cfg, alarm_id, Action.ACK, user, comment)


def shelve(cfg: Config, alarm_id: str, user: str, until_ns: int, comment: str = "") -> AlarmView:
    """Shelve until ``until_ns`` (wall clock); no longer than ``alarms.shelve_max_s`` from now."""
    limit = time.time_ns() + round(cfg.alarms.shelve_max_s * 1e9)
    if until_ns > limit:
        raise AlarmError(f"shelving is limited to {cfg.alarms.shelve_max_s / 3600:g} h (alarms.shelve_max_s);"
                         " shelve for less, or remove the alarm from service for maintenance")
    return _change(cfg, alarm_id, Action.SHELVE, user, comment, until_ns)


def unshelve(cfg: Config, alarm_id: str, user: str) -> AlarmView:
    return _change(cfg, alarm_id, Action.UNSHELVE, user)


def remove_from_service(cfg: Config, alarm_id: str, user: str, comment: str = "") -> AlarmView:
    return _change(cfg, alarm_id, Action.REMOVE, user, comment)


def return_to_service(cfg: Config, alarm_id: str, user: str, comment: str = "") -> AlarmView:
    return _change(cfg, alarm_id, Action.RESTORE, user, comment)


class AlarmFeed:
    """The pipeline's alarm stage: ingest's facts in, the same facts plus alarm transitions out.

    Episodes and gaps become conditions; lot and other facts only move the data clock that
    confirms off-delayed clears (as does ``clock``, read whenever facts arrive, e.g. a committed
    file every second). Transitions also go to ``notify`` (which must not block). ``ledger``: clear
    the alarms a killed run left active; pass it only where one ingest owns every sensor (the demo),
    never to one of several workers sharing a subscription (it would clear the others' alarms).
    """

    def __init__(self, cfg: Config, notify: Callable[[Transition], None] | None = None,
                 clock: Callable[[], int] | None = None, ledger: Ledger | None = None) -> None:
        from qctrace.notify import Notifier

        self.clock = clock  # the data clock (ingest's newest source time): lets clears fall due without a fact
        self.engine = AlarmEngine(cfg.alarms)
        self.enabled = cfg.alarms.enabled
        self.notifier = Notifier.from_config(cfg.alarms) if self.enabled and notify is None else None
        self.notify = notify or (self.notifier.submit if self.notifier else None)
        self._pending = self._orphans(ledger) if ledger is not None and self.enabled else []

    @staticmethod
    def _orphans(led: Ledger) -> list[Transition]:
        """Alarms a previous run left active (it was killed before their episodes ended): cleared now,
        saying why. Detection resumes from its committed state, so a condition that persists opens a
        new episode and raises a new alarm; none stays active with nobody left to clear it."""
        now = time.time_ns()
        out = []
        for a in fold(led, now).values():
            if a.active:
                at = max(now, a.raised_ns)
                out.append(Transition(apply(a, Action.CLEAR, at), Action.CLEAR, at,
                                      comment="the pipeline restarted before this condition ended; a condition"
                                              " that persists raises a new alarm"))
        return out

    def __call__(self, facts: list) -> list:
        if not self.enabled:
            return facts
        conds = [Condition.of_episode(f) if isinstance(f, Episode) else Condition.of_opening(f)
                 if isinstance(f, EpisodeOpened) else Condition.of_gap(f)
                 for f in facts if isinstance(f, Episode | EpisodeOpened | Gap)]
        now = max((t for f in facts if (t := getattr(f, "at_ns", None) or getattr(f, "end_ns", None)
                                        or getattr(f, "start_ns", None))), default=0)
        if self.clock is not None:
            now = max(now, self.clock())
        out, self._pending = [*self._pending, *self.engine.observe(conds)], []
        if now:
            out += self.engine.advance(now)
        return [*facts, *self._tell(out)]

    def close(self) -> list[Transition]:
        """At shutdown: the pending clears (to record), after which queued notifications are delivered."""
        out, self._pending = self._tell([*self._pending, *self.engine.flush()]) if self.enabled else [], []
        if self.notifier is not None:
            self.notifier.close()
        return out

    def _tell(self, transitions: list[Transition]) -> list[Transition]:
        if self.notify is not None:
            for t in transitions:
                try:
                    self.notify(t)
                except QctraceError as exc:  # a notifier must never stop ingest
                    log.warning("alarms.notify_failed id=%s error=%s", t.alarm.id, exc)
        return transitions
