"""ISA-18.2 states: properties over random operator and process action sequences, and the flood control."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.alarms import ALLOWED, Action, Alarm, AlarmEngine, Condition, State, apply
from qctrace.config import AlarmsConfig, AlarmSensorRule
from qctrace.errors import AlarmError
from qctrace.schema import Flag

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _alarm() -> Alarm:
    return Alarm("a1", "s/l1/plc/weight", "spec", "high", T0, "HIGH spec on s/l1/plc/weight")


actions = st.lists(st.tuples(st.sampled_from(list(Action)), st.integers(1, 100), st.integers(-50, 200)),
                   max_size=30)


@given(actions)
def test_no_illegal_transition_is_reachable(seq):
    a, now = _alarm(), T0
    for action, dt, shelf in seq:
        before = a.state(now)
        now += dt * S
        lapsed = a.state(now)  # time alone may only end shelving
        assert lapsed == before or (before is State.SHELVED and (State.SHELVED, lapsed) in ALLOWED)
        try:
            a = apply(a, action, now, "ann", until_ns=now + shelf * S)
        except AlarmError as exc:
            assert str(exc)  # refused with a reason; the alarm is unchanged
            continue
        after = a.state(now)
        assert after == lapsed or (lapsed, after) in ALLOWED, (action, lapsed, after)


@given(actions)
def test_acknowledge_is_idempotent(seq):
    a, now = _alarm(), T0
    for action, dt, shelf in seq:
        now += dt * S
        try:
            a = apply(a, action, now, "ann", until_ns=now + shelf * S)
        except AlarmError:
            continue
    try:
        once = apply(a, Action.ACK, now, "bob")
    except AlarmError:
        return  # shelved or out of service: acknowledging is refused, both times
    assert apply(once, Action.ACK, now, "carol") is once
    assert once.state(now) in (State.ACK_ACTIVE, State.NORMAL)


@given(st.integers(1, 10_000), st.integers(0, 20_000))
def test_shelving_expires_by_itself(for_s, later_s):
    a = apply(_alarm(), Action.SHELVE, T0, "ann", until_ns=T0 + for_s * S)
    t = T0 + later_s * S
    assert (a.state(t) is State.SHELVED) == (later_s < for_s)
    if later_s >= for_s:
        assert a.state(t) is State.UNACK_ACTIVE  # what it hid comes back, still unacknowledged


def test_the_isa_cycle_and_what_is_refused():
    a = _alarm()
    assert a.state(T0) is State.UNACK_ACTIVE
    b = apply(a, Action.ACK, T0 + S, "ann")
    assert (b.state(T0), b.acked_by) == (State.ACK_ACTIVE, "ann")
    assert apply(b, Action.CLEAR, T0 + 2 * S).state(T0) is State.NORMAL
    rtn = apply(a, Action.CLEAR, T0 + 2 * S)
    assert rtn.state(T0) is State.UNACK_RTN and rtn.cleared_ns == T0 + 2 * S
    assert apply(rtn, Action.RAISE, T0 + 3 * S).state(T0) is State.UNACK_ACTIVE
    with pytest.raises(AlarmError, match="unshelve"):
        apply(apply(a, Action.SHELVE, T0, "ann", until_ns=T0 + 60 * S), Action.ACK, T0 + S, "ann")
    with pytest.raises(AlarmError, match="time-limited"):
        apply(a, Action.SHELVE, T0, "ann", until_ns=T0)
    with pytest.raises(AlarmError, match="nothing to unshelve"):
        apply(a, Action.UNSHELVE, T0, "ann")
    with pytest.raises(AlarmError, match="who"):
        apply(a, Action.ACK, T0, "")
    oos = apply(a, Action.REMOVE, T0, "maint")
    assert oos.state(T0) is State.OUT_OF_SERVICE
    assert apply(oos, Action.RESTORE, T0, "maint").state(T0) is State.UNACK_ACTIVE


def _ep(sensor, start_s, end_s, flags=Flag.SPEC_HIGH, lot=None):
    return Condition(sensor, int(flags), T0 + start_s * S, T0 + end_s * S, lot, "x")


def test_chattering_episodes_stay_one_alarm_and_clear_after_the_off_delay():
    eng = AlarmEngine(AlarmsConfig(off_delay_s=30, group_window_s=0))
    out = eng.observe([_ep("s/l1/plc/w", 0, 2), _ep("s/l1/plc/w", 10, 12), _ep("s/l1/plc/w", 30, 31)])
    assert [t.action for t in out] == [Action.RAISE]
    assert eng.stats.chatter_merged == 2
    assert eng.advance(T0 + 60 * S) == []  # 29 s after the last end: still within the off-delay
    cleared = eng.advance(T0 + 62 * S)
    assert [(t.action, t.at_ns, t.alarm.episodes) for t in cleared] == [(Action.CLEAR, T0 + 31 * S, 3)]
    again = eng.observe([_ep("s/l1/plc/w", 100, 101)])  # long after: a new alarm
    assert [t.action for t in again] == [Action.RAISE] and again[0].alarm.id != out[0].alarm.id


def test_related_alarms_on_a_line_are_grouped_but_never_under_a_lower_priority():
    eng = AlarmEngine(AlarmsConfig(group_window_s=60))
    out = eng.observe([_ep("s/l1/plc/w", 0, 5, Flag.EWMA_Z), _ep("s/l1/plc/t", 3, 9, Flag.SPIKE),
                       _ep("s/l2/plc/t", 4, 9, Flag.SPIKE), _ep("s/l1/plc/q", 6, 9, Flag.SPEC_LOW)])
    raised = [t.alarm for t in out if t.action is Action.RAISE]
    assert [(a.sensor, a.priority) for a in raised] == [("s/l1/plc/w", "low"), ("s/l2/plc/t", "low"),
                                                        ("s/l1/plc/q", "high")]
    assert eng.stats.grouped == 1
    members = {a.id: a.members for a in eng.open_alarms()}
    assert members[raised[0].id] == ("s/l1/plc/w ewma", "s/l1/plc/t spike")


def test_priority_comes_from_the_rule_then_the_sensor_configuration():
    cfg = AlarmsConfig(group_window_s=0, on_delay_s={"spike": 2.0}, sensors=(
        AlarmSensorRule(match="s/l1/*/torque", priorities={"ewma": "critical"}),
        AlarmSensorRule(match="s/l1/*/speed", enabled=False)))
    eng = AlarmEngine(cfg)
    out = eng.observe([_ep("s/l1/plc/torque", 0, 5, Flag.EWMA_Z), _ep("s/l1/plc/w", 0, 5, Flag.EWMA_Z | Flag.SPEC_LOW),
                       _ep("s/l1/plc/speed", 0, 5), _ep("s/l1/plc/x", 0, 1, Flag.SPIKE),
                       _ep("c/truck/log/temperature", 0, 5, Flag.BAND_HIGH)])
    got = {t.alarm.sensor: (t.alarm.rule, t.alarm.priority) for t in out}
    assert got == {"s/l1/plc/torque": ("ewma", "critical"), "s/l1/plc/w": ("spec", "high"),
                   "c/truck/log/temperature": ("excursion", "critical")}
    assert (eng.stats.disabled, eng.stats.on_delay) == (1, 1)


def test_unknown_rule_in_configuration_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="nosuch"):
        AlarmsConfig(priorities={"nosuch": "high"})


conds = st.lists(st.tuples(st.sampled_from(["s/l1/a/x", "s/l1/a/y", "s/l2/a/x", "c/t1/l/temperature"]),
                           st.sampled_from([Flag.SPEC_HIGH, Flag.EWMA_Z, Flag.SPIKE, Flag.BAND_LOW, Flag.STUCK]),
                           st.integers(0, 3000), st.integers(0, 300)), max_size=40)


@given(conds)
def test_engine_raises_at_most_one_alarm_per_condition_and_clears_every_one(cs):
    eng = AlarmEngine(AlarmsConfig())
    out = eng.observe(_ep(sensor, start, start + dur, flags) for sensor, flags, start, dur in cs)
    out += eng.flush()
    raised = [t for t in out if t.action is Action.RAISE]
    cleared = [t for t in out if t.action is Action.CLEAR]
    assert len(raised) <= len(cs)
    assert sorted(t.alarm.id for t in raised) == sorted(t.alarm.id for t in cleared)  # one clear each, none lost
    assert len({t.alarm.id for t in raised}) == len(raised)
    st_ = eng.stats
    assert st_.raised + st_.chatter_merged + st_.grouped + st_.on_delay + st_.disabled == len(cs)
    for t in cleared:
        assert t.alarm.state(t.at_ns) is State.UNACK_RTN and t.at_ns >= t.alarm.raised_ns


def test_an_alarm_is_raised_when_its_episode_opens_and_cleared_after_it_ends():
    eng = AlarmEngine(AlarmsConfig(off_delay_s=10))
    opening = Condition("s/l1/plc/w", int(Flag.SPEC_HIGH), T0, None, "L1", "active")
    out = eng.observe([opening])
    assert [(t.action, t.at_ns) for t in out] == [(Action.RAISE, T0)]
    assert eng.advance(T0 + 3600 * S) == []  # still active: never cleared by time alone
    assert eng.observe([_ep("s/l1/plc/w", 0, 30)]) == []  # the same episode ended: no second alarm
    assert eng.advance(T0 + 35 * S) == []  # within the off-delay
    cleared = eng.advance(T0 + 41 * S)
    assert [(t.action, t.at_ns, t.alarm.id) for t in cleared] == [(Action.CLEAR, T0 + 30 * S, out[0].alarm.id)]


def test_an_episode_that_ends_more_severe_than_it_opened_escalates():
    eng = AlarmEngine(AlarmsConfig(group_window_s=60))
    first = eng.observe([Condition("c/t1/log/temperature", int(Flag.SPIKE), T0, None)])
    assert first[0].alarm.priority == "low"
    out = eng.observe([_ep("c/t1/log/temperature", 0, 300, Flag.SPIKE | Flag.BAND_HIGH)])
    assert [(t.action, t.alarm.rule, t.alarm.priority) for t in out] == [(Action.RAISE, "excursion", "critical")]
    assert eng.stats.escalated == 1
    assert {t.alarm.id for t in eng.flush()} == {first[0].alarm.id, out[0].alarm.id}
