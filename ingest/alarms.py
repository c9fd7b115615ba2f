"""Alarms as ISA-18.2 (ANSI/ISA-18.2-2016, IEC 62682) states, with EEMUA 191 flood control.

An anomaly episode says "this sensor misbehaved from t0 to t1"; an alarm is what an operator must
answer. Everything here is pure (no clock, no I/O): times come in with the facts, so the same
episodes always give the same alarms, in the pipeline, in a replay and in ``bench/alarms.py``.

State of one alarm is three facts -- is the condition active, has someone acknowledged it, is it
shelved (until when) or out of service -- and ``Alarm.state`` derives the ISA-18.2 state from them::

    NORMAL --condition--> UNACK_ACTIVE --ack--> ACK_ACTIVE --return to normal--> NORMAL
                               |                                  (ack a second time: no change)
                               +--return to normal--> UNACK_RTN --ack--> NORMAL
                                                        +--condition again--> UNACK_ACTIVE
    any --shelve(until)--> SHELVED --unshelve, or until passes--> the state it hides
    any --remove from service--> OUT_OF_SERVICE --return to service--> the state it hides

``apply`` is the only way an alarm changes; it refuses what the diagram does not allow
(``AlarmError``, whose message says what to do instead) and is idempotent where ISA-18.2 says an
action on an alarm already in its target state does nothing (acknowledge twice, clear twice).

Flood control (``AlarmEngine``), the EEMUA 191 toolbox in the order it is applied:

* one alarm per episode, never per reading (the episode tracker already merged the readings);
* on-delay: an episode shorter than the rule's ``on_delay_s`` raises nothing;
* off-delay against chattering: a new episode of the same sensor and rule that starts within
  ``off_delay_s`` of the previous one's end continues that alarm instead of raising another (the
  clear is only recorded once the condition has stayed away for ``off_delay_s``);
* grouping: an episode on a line that already has an alarm raised within ``group_window_s`` joins
  it as a member, unless it would deserve a higher priority (a critical is never hidden under a low).
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from qctrace.config import DEFAULT_PRIORITIES, PRIORITIES, AlarmsConfig
from qctrace.errors import AlarmError
from qctrace.schema import Flag, flag_names

SYSTEM_USER = "qctrace"
"""Who raises and clears alarms: the pipeline itself. Operators' actions carry their own names."""


class State(enum.StrEnum):
    UNACK_ACTIVE = "UNACK_ACTIVE"
    ACK_ACTIVE = "ACK_ACTIVE"
    UNACK_RTN = "UNACK_RTN"
    NORMAL = "NORMAL"
    SHELVED = "SHELVED"
    OUT_OF_SERVICE = "OUT_OF_SERVICE"


class Action(enum.StrEnum):
    """What can happen to an alarm; the value is the ledger event kind's suffix (``alarm_<value>``)."""

    RAISE = "raised"  # the condition became active (first time: the alarm is created)
    CLEAR = "cleared"  # the condition returned to normal
    ACK = "acknowledged"
    SHELVE = "shelved"
    UNSHELVE = "unshelved"
    REMOVE = "removed"  # taken out of service (maintenance)
    RESTORE = "restored"  # returned to service


ALLOWED: frozenset[tuple[State, State]] = frozenset({
    (State.NORMAL, State.UNACK_ACTIVE),
    (State.UNACK_ACTIVE, State.ACK_ACTIVE), (State.UNACK_ACTIVE, State.UNACK_RTN),
    (State.ACK_ACTIVE, State.NORMAL),
    (State.UNACK_RTN, State.NORMAL), (State.UNACK_RTN, State.UNACK_ACTIVE),
    *((s, State.SHELVED) for s in (State.UNACK_ACTIVE, State.ACK_ACTIVE, State.UNACK_RTN)),
    *((State.SHELVED, s) for s in (State.UNACK_ACTIVE, State.ACK_ACTIVE, State.UNACK_RTN, State.NORMAL)),
    *((s, State.OUT_OF_SERVICE) for s in State if s is not State.OUT_OF_SERVICE),
    *((State.OUT_OF_SERVICE, s) for s in (State.UNACK_ACTIVE, State.ACK_ACTIVE, State.UNACK_RTN, State.NORMAL)),
})
"""Every state change ISA-18.2's state diagram allows; the property tests check that ``apply`` and
shelving expiry never produce another."""


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    sensor: str  # full key site/line/device/sensor (a source site/line/device for a gap)
    rule: str
    priority: str
    raised_ns: int
    message: str
    lot: str | None = None
    active: bool = True
    acked: bool = False
    cleared_ns: int | None = None
    acked_by: str | None = None
    shelved_until_ns: int | None = None
    shelved_by: str | None = None
    out_of_service: bool = False
    members: tuple[str, ...] = ()  # "sensor rule" of every episode grouped into this alarm, its own first
    episodes: int = 1

    @property
    def site(self) -> str:
        return self.sensor.split("/")[0]

    @property
    def line(self) -> str:
        parts = self.sensor.split("/")
        return parts[1] if len(parts) > 1 else ""

    def state(self, now_ns: int) -> State:
        """The ISA-18.2 state at ``now_ns``: shelving lapses by itself when its time is up."""
        if self.out_of_service:
            return State.OUT_OF_SERVICE
        if self.shelved_until_ns is not None and now_ns < self.shelved_until_ns:
            return State.SHELVED
        return self.base_state()

    def record(self, now_ns: int) -> dict[str, object]:
        """The alarm as a ledger event's ``qctrace:alarm`` (times RFC 3339, ms: JSON numbers cannot hold ns)."""
        return {"id": self.id, "sensor": self.sensor, "rule": self.rule, "priority": self.priority,
                "state": self.state(now_ns).value, "raised": iso(self.raised_ns), "message": self.message,
                "lot": self.lot, "active": self.active, "acked": self.acked,
                "cleared": None if self.cleared_ns is None else iso(self.cleared_ns), "acked_by": self.acked_by,
                "shelved_until": None if self.shelved_until_ns is None else iso(self.shelved_until_ns),
                "shelved_by": self.shelved_by, "out_of_service": self.out_of_service,
                "members": list(self.members), "episodes": self.episodes}

    @classmethod
    def from_record(cls, r: dict) -> Alarm:
        """The alarm a raise event created (the inverse of ``record`` at ms precision)."""
        return cls(r["id"], r["sensor"], r["rule"], r["priority"], parse_iso(r["raised"]), r.get("message", ""),
                   r.get("lot"), members=tuple(r.get("members") or ()), episodes=int(r.get("episodes", 1)))

    def base_state(self) -> State:
        """The state shelving or out-of-service hides."""
        if self.active:
            return State.ACK_ACTIVE if self.acked else State.UNACK_ACTIVE
        return State.NORMAL if self.acked else State.UNACK_RTN


def iso(ns: int) -> str:
    """RFC 3339 UTC, milliseconds (as ledger eventTime)."""
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{(ns // 1_000_000) % 1000:03d}Z"


def parse_iso(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (int(dt.replace(microsecond=0).timestamp()) * 1_000_000 + dt.microsecond) * 1000


def apply(alarm: Alarm, action: Action, at_ns: int, user: str = SYSTEM_USER, until_ns: int | None = None) -> Alarm:
    """The alarm after ``action`` at ``at_ns`` by ``user``; the same object when the action changes nothing.

    Raises ``AlarmError`` for what ISA-18.2 does not allow, naming the state and what would work.
    """
    if not user:
        raise AlarmError(f"alarm {alarm.id}: say who {action.value} it (a user name)")
    state = alarm.state(at_ns)
    where = f"alarm {alarm.id} ({alarm.sensor} {alarm.rule}) is {state.value}"
    if action is Action.RAISE:
        if alarm.active:
            return alarm
        return replace(alarm, active=True, acked=False, acked_by=None, cleared_ns=None, episodes=alarm.episodes + 1)
    if action is Action.CLEAR:
        if not alarm.active:
            return alarm
        return replace(alarm, active=False, cleared_ns=at_ns)
    if action is Action.ACK:
        if state in (State.SHELVED, State.OUT_OF_SERVICE):
            raise AlarmError(f"{where}: {'unshelve' if state is State.SHELVED else 'return it to service'}"
                             " before acknowledging it")
        if alarm.acked:
            return alarm  # acknowledging twice changes nothing (ISA-18.2)
        return replace(alarm, acked=True, acked_by=user)
    if action is Action.SHELVE:
        if until_ns is None or until_ns <= at_ns:
            raise AlarmError(f"alarm {alarm.id}: shelving needs an end time in the future (ISA-18.2 shelving is"
                             " always time-limited)")
        if state is State.OUT_OF_SERVICE:
            raise AlarmError(f"{where}: return it to service before shelving it")
        if state is State.NORMAL:
            raise AlarmError(f"{where}: it has returned to normal and been acknowledged; nothing to shelve")
        return replace(alarm, shelved_until_ns=until_ns, shelved_by=user)
    if action is Action.UNSHELVE:
        if state is not State.SHELVED:
            raise AlarmError(f"{where}, not SHELVED: nothing to unshelve")
        return replace(alarm, shelved_until_ns=None, shelved_by=None)
    if action is Action.REMOVE:
        if alarm.out_of_service:
            return alarm
        return replace(alarm, out_of_service=True, shelved_until_ns=None, shelved_by=None)
    if action is Action.RESTORE:
        if not alarm.out_of_service:
            raise AlarmError(f"{where}, not OUT_OF_SERVICE: nothing to return to service")
        return replace(alarm, out_of_service=False)
    raise AlarmError(f"unknown alarm action {action!r}")  # pragma: no cover - Action is closed


# ---------------------------------------------------------------- from episodes to conditions

_RULES: tuple[tuple[str, Flag], ...] = (
    ("excursion", Flag.BAND_LOW | Flag.BAND_HIGH | Flag.BUDGET),
    ("door", Flag.DOOR_OPEN),
    ("spec", Flag.SPEC_LOW | Flag.SPEC_HIGH),
    ("gap", Flag.GAP | Flag.STALE),
    ("stuck", Flag.STUCK),
    ("cusum", Flag.CUSUM_HIGH | Flag.CUSUM_LOW),
    ("ewma", Flag.EWMA_Z),
    ("spike", Flag.SPIKE),
    ("nelson", Flag.NELSON_1 | Flag.NELSON_2 | Flag.NELSON_3 | Flag.NELSON_4 | Flag.NELSON_5 | Flag.NELSON_6
     | Flag.NELSON_7 | Flag.NELSON_8),
    ("rate", Flag.RATE),
    ("quality", Flag.BAD_QUALITY | Flag.NOT_FINITE),
)
RULE_NAMES = tuple(name for name, _ in _RULES)


def rules_of(flags: int) -> list[str]:
    """Alarm rule names of a flags value, most severe family first."""
    return [name for name, bits in _RULES if int(flags) & int(bits)]


@dataclass(frozen=True, slots=True)
class Condition:
    """One abnormal condition: an anomaly episode, a cold-chain excursion or a data gap."""

    sensor: str
    flags: int
    start_ns: int
    end_ns: int | None  # None: still active
    lot: str | None = None
    detail: str = ""
    rule: str | None = None  # None: from the flags

    @classmethod
    def of_episode(cls, ep: Any) -> Condition:  # ingest.episodes.Episode (duck-typed: no import cycle)
        """An episode's condition; its text gives the rules, duration, reading count and value range."""
        secs = (ep.end_ns - ep.start_ns) / 1e9
        detail = f"{flag_names(ep.flags) or 'flagged'} for {secs:.0f} s, {ep.readings} readings"
        if ep.readings:
            detail += f", values {ep.min_value:.4g}..{ep.max_value:.4g}"
        return cls(ep.sensor, ep.flags, ep.start_ns, ep.end_ns, ep.lot, detail)

    @classmethod
    def of_opening(cls, op: Any) -> Condition:  # ingest.episodes.EpisodeOpened
        """An episode still open: active from its start, its end to come with the closed episode."""
        return cls(op.sensor, op.flags, op.start_ns, None, op.lot, f"{flag_names(op.flags) or 'flagged'}, active")

    @classmethod
    def of_gap(cls, gap: Any) -> Condition:  # qctrace.schema.Gap
        secs = (gap.end_ns - gap.start_ns) / 1e9
        return cls(gap.source, int(Flag.GAP), gap.start_ns, gap.end_ns, None,
                   f"no readings for {secs:.0f} s ({gap.reason})"[:300], rule="gap")


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change to record: the alarm as it is after ``action`` at ``at_ns`` by ``by``."""

    alarm: Alarm
    action: Action
    at_ns: int
    by: str = SYSTEM_USER
    comment: str = ""


def priority_for(cfg: AlarmsConfig, sensor: str, rule: str) -> str | None:
    """Priority of ``rule`` on ``sensor``: the rule's default, then matching ``[[alarms.sensors]]`` in
    order (later wins); ``None`` when a matching entry disables alarms for that sensor."""
    prio: str | None = cfg.priorities.get(rule) or DEFAULT_PRIORITIES.get(rule, "low")
    for s in cfg.sensors:
        if fnmatch.fnmatchcase(sensor, s.match):
            if not s.enabled:
                prio = None
            elif s.priorities.get(rule) or s.priority:
                prio = s.priorities.get(rule) or s.priority
    return prio


def _rank(priority: str) -> int:
    return PRIORITIES.index(priority)


@dataclass
class EngineStats:
    conditions: int = 0  # episodes, excursions and gaps seen
    raised: int = 0  # alarms annunciated
    chatter_merged: int = 0  # conditions continuing an alarm of the same sensor and rule (off-delay)
    grouped: int = 0  # conditions joined to another alarm of their line
    on_delay: int = 0  # conditions too short to alarm
    disabled: int = 0  # conditions of sensors whose alarms are disabled
    escalated: int = 0  # ended episodes whose rules deserved a higher priority than their opening


@dataclass
class _Open:
    alarm: Alarm
    ends: dict[tuple[str, int], int | None]  # (sensor, start) of each condition in it -> its end (None: active)
    keys: set[tuple[str, str]] = field(default_factory=set)

    @property
    def end_ns(self) -> int | None:
        """When the last of its conditions ended; None while any is active."""
        ends = list(self.ends.values())
        return None if any(e is None for e in ends) else max(ends)  # type: ignore[type-var]


class AlarmEngine:
    """Conditions in, alarm transitions out (raise and clear; operators' actions go through ``apply``).

    A condition may arrive twice: when its episode opens (``end_ns`` None: the alarm is raised
    then) and when it ends (same sensor and start: the alarm's clear becomes due). If the ended
    episode's rules deserve a higher priority than its opening did, a second alarm at that priority
    is raised (escalation) rather than the first one changing its priority silently.
    """

    def __init__(self, cfg: AlarmsConfig) -> None:
        self.cfg = cfg
        self.stats = EngineStats()
        self._open: dict[str, _Open] = {}  # alarm id -> alarm whose clear is not recorded yet
        self._owner: dict[tuple[str, int], str] = {}  # active condition (sensor, start) -> its alarm's id
        self._off = round(cfg.off_delay_s * 1e9)
        self._window = round(cfg.group_window_s * 1e9)

    def observe(self, conds: Iterable[Condition]) -> list[Transition]:
        """Transitions the conditions cause, in time order, including clears their times confirm."""
        out: list[Transition] = []
        for c in sorted(conds, key=lambda c: (c.start_ns, c.end_ns is not None)):
            out += self.advance(c.start_ns)
            out += self._one(c)
        return out

    def _rank_rule(self, c: Condition) -> tuple[str, str] | None:
        candidates = [c.rule] if c.rule else rules_of(c.flags) or ["quality"]
        ranked = [(p, r) for r in candidates if (p := priority_for(self.cfg, c.sensor, r)) is not None]
        return min(ranked, key=lambda pr: _rank(pr[0])) if ranked else None  # most severe; ties keep rule order

    def _one(self, c: Condition) -> list[Transition]:
        ek = (c.sensor, c.start_ns)
        ranked = self._rank_rule(c)
        if ek in self._owner:  # the end (or a repeat) of a condition already alarmed while active
            if c.end_ns is None:
                return []
            o = self._open.get(self._owner.pop(ek))
            if o is not None:
                o.ends[ek] = c.end_ns
            if o is None or ranked is None or _rank(ranked[0]) >= _rank(o.alarm.priority):
                return []
            self.stats.escalated += 1  # and on below: the more severe rule raises its own alarm
        self.stats.conditions += 1
        if ranked is None:
            self.stats.disabled += 1
            return []
        prio, rule = ranked
        if c.end_ns is not None and (c.end_ns - c.start_ns) < self.cfg.on_delay_s.get(rule, 0.0) * 1e9:
            self.stats.on_delay += 1
            return []
        key = (c.sensor, rule)
        for o in self._open.values():  # chattering: the same sensor and rule, back within the off-delay
            end = o.end_ns
            if key in o.keys and (end is None or c.start_ns - end <= self._off):
                self.stats.chatter_merged += 1
                o.alarm = replace(o.alarm, episodes=o.alarm.episodes + 1)
                self._attach(o, ek, c.end_ns)
                return []
        line = "/".join(c.sensor.split("/")[:2])
        for o in self._open.values():  # grouping: one alarm for related trouble on one line
            a = o.alarm
            if ("/".join(a.sensor.split("/")[:2]) == line and 0 <= c.start_ns - a.raised_ns < self._window
                    and _rank(prio) >= _rank(a.priority)):
                self.stats.grouped += 1
                o.alarm = replace(a, members=(*a.members, f"{c.sensor} {rule}"))
                o.keys.add(key)
                self._attach(o, ek, c.end_ns)
                return []
        aid = hashlib.sha256(f"{c.sensor}|{rule}|{c.start_ns}".encode()).hexdigest()[:16]
        message = f"{prio.upper()} {rule} on {c.sensor}: {c.detail}" + (f" (lot {c.lot})" if c.lot else "")
        alarm = Alarm(aid, c.sensor, rule, prio, c.start_ns, message, c.lot, members=(f"{c.sensor} {rule}",))
        o = _Open(alarm, {}, {key})
        self._open[aid] = o
        self._attach(o, ek, c.end_ns)
        self.stats.raised += 1
        return [Transition(alarm, Action.RAISE, c.start_ns)]

    def _attach(self, o: _Open, ek: tuple[str, int], end_ns: int | None) -> None:
        o.ends[ek] = end_ns
        if end_ns is None:
            self._owner[ek] = o.alarm.id

    def advance(self, now_ns: int) -> list[Transition]:
        """Record the clears whose condition has stayed away for the off-delay by ``now_ns``."""
        done = [o for o in self._open.values() if (e := o.end_ns) is not None and now_ns - e > self._off]
        return self._clear(done)

    def flush(self) -> list[Transition]:
        """At shutdown: record every pending clear (the data says the conditions ended)."""
        return self._clear([o for o in self._open.values() if o.end_ns is not None])

    def _clear(self, done: list[_Open]) -> list[Transition]:
        out = []
        for o in sorted(done, key=lambda o: o.end_ns or 0):
            del self._open[o.alarm.id]
            end = o.end_ns
            assert end is not None
            out.append(Transition(apply(o.alarm, Action.CLEAR, end), Action.CLEAR, end))
        return out

    def open_alarms(self) -> list[Alarm]:
        return [o.alarm for o in self._open.values()]
