"""Alarm operations over a real ledger: state replayed from events, every change recorded with its user."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from ingest.episodes import Episode
from ledger import Ledger
from ledger import events as ev_mod
from qctrace import alarm_ops
from qctrace.cli import cli
from qctrace.config import Config
from qctrace.errors import AlarmError
from qctrace.ledger_ops import ledger_path
from qctrace.schema import Flag

S = 1_000_000_000
T0 = 1_762_063_200 * S  # 2025-11-02T06:00:00Z


def _episode(sensor, start_s, end_s, flags=Flag.SPEC_HIGH):
    return Episode(sensor, T0 + start_s * S, T0 + end_s * S, int(flags), 1.0, 9.0, 5, "L0001")


@pytest.fixture()
def cfg(tmp_path):
    cfg = Config(data_dir=tmp_path)
    feed = alarm_ops.AlarmFeed(cfg)
    facts = feed([_episode("p/l1/plc/weight", 0, 4), _episode("p/l1/plc/weight", 10, 12),
                  _episode("c/truck1/log/temperature", 0, 300, Flag.BAND_HIGH)])
    facts += feed.close()
    transitions = [f for f in facts if not isinstance(f, Episode)]
    with Ledger(ledger_path(tmp_path)) as led:
        led.append_many(alarm_ops.alarm_events(transitions, lambda lot: "0614141.107346"))
    return cfg


def _by_sensor(cfg):
    return {v.sensor: v for v in alarm_ops.list_alarms(cfg)}


def test_feed_records_one_alarm_per_chattering_episode_pair_and_clears_them(cfg):
    views = _by_sensor(cfg)
    assert set(views) == {"p/l1/plc/weight", "c/truck1/log/temperature"}
    w = views["p/l1/plc/weight"]
    assert (w.state, w.rule, w.priority, w.episodes) == ("UNACK_RTN", "spec", "high", 2)
    assert (w.site, w.line, w.lot) == ("p", "l1", "L0001")
    assert w.cleared_ns == T0 + 12 * S and w.raised_ns == T0
    assert views["c/truck1/log/temperature"].priority == "critical"
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        raised = [e.as_dict() for e in led.events(kind=ev_mod.ALARM_RAISED)]
        assert {e[f"{ev_mod.NS}:by"] for e in raised} == {"qctrace"}
        assert [e.idx for e in led.events(lot="L0001")]  # a raise names its lot: the lot's trace finds it


def test_acknowledge_records_who_and_is_idempotent(cfg):
    aid = _by_sensor(cfg)["p/l1/plc/weight"].id
    v = alarm_ops.acknowledge(cfg, aid, "ann", "checked the filler")
    assert (v.state, v.acked_by) == ("NORMAL", "ann")
    again = alarm_ops.acknowledge(cfg, aid, "bob")
    assert (again.state, again.acked_by) == ("NORMAL", "ann")
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        acks = [e.as_dict() for e in led.events(kind=ev_mod.ALARM_ACKNOWLEDGED)]
    assert [(a[f"{ev_mod.NS}:by"], a[f"{ev_mod.NS}:comment"], a[f"{ev_mod.NS}:alarm"]["id"]) for a in acks] == [
        ("ann", "checked the filler", aid)]
    assert aid not in {v.id for v in alarm_ops.list_alarms(cfg, active_only=True)}
    assert aid in {v.id for v in alarm_ops.list_alarms(cfg)}


def test_shelve_and_unshelve_are_ledger_events_and_shelving_is_bounded(cfg):
    aid = _by_sensor(cfg)["c/truck1/log/temperature"].id
    until = time.time_ns() + 3600 * S
    v = alarm_ops.shelve(cfg, aid, "carol", until, "door sensor being replaced")
    assert (v.state, v.shelved_until_ns // 1_000_000) == ("SHELVED", until // 1_000_000)
    with pytest.raises(AlarmError, match="unshelve"):
        alarm_ops.acknowledge(cfg, aid, "ann")
    assert alarm_ops.unshelve(cfg, aid, "carol").state == "UNACK_RTN"
    with pytest.raises(AlarmError, match="limited to 12 h"):
        alarm_ops.shelve(cfg, aid, "carol", time.time_ns() + 13 * 3600 * S)
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        kinds = [e.kind for e in led.events() if e.kind in ev_mod.ALARM_KINDS]
    assert kinds[-2:] == [ev_mod.ALARM_SHELVED, ev_mod.ALARM_UNSHELVED]


def test_an_expired_shelving_shows_the_alarm_again(cfg):
    aid = _by_sensor(cfg)["p/l1/plc/weight"].id
    alarm_ops.shelve(cfg, aid, "carol", time.time_ns() + S // 5)
    assert _by_sensor(cfg)["p/l1/plc/weight"].state == "SHELVED"
    time.sleep(0.3)
    v = _by_sensor(cfg)["p/l1/plc/weight"]
    assert (v.state, v.shelved_until_ns) == ("UNACK_RTN", None)


def test_unknown_id_and_missing_user_are_clear_errors_that_write_nothing(cfg):
    n = len(Ledger(ledger_path(cfg.data_dir), readonly=True))
    with pytest.raises(AlarmError, match=r"no alarm 'nope'.*alarms list"):
        alarm_ops.acknowledge(cfg, "nope", "ann")
    aid = _by_sensor(cfg)["p/l1/plc/weight"].id
    with pytest.raises(AlarmError, match="did you mean " + aid):
        alarm_ops.acknowledge(cfg, aid[:6], "ann")
    with pytest.raises(AlarmError, match="--by"):
        alarm_ops.acknowledge(cfg, aid, " ")
    assert len(Ledger(ledger_path(cfg.data_dir), readonly=True)) == n


def test_cli_lists_acks_and_shelves(cfg):
    r = CliRunner()
    d = ["--data-dir", str(cfg.data_dir)]
    out = r.invoke(cli, ["alarms", "list", *d])
    assert out.exit_code == 0 and "UNACK_RTN" in out.output and "CRITICAL excursion" in out.output
    aid = _by_sensor(cfg)["c/truck1/log/temperature"].id
    out = r.invoke(cli, ["alarms", "shelve", aid, "--for", "1h30m", "--by", "dave", *d])
    assert out.exit_code == 0 and "SHELVED" in out.output, out.output
    out = r.invoke(cli, ["alarms", "ack", "zzz", "--by", "dave", *d])
    assert out.exit_code == 1 and "error: no alarm 'zzz'" in out.output
    out = r.invoke(cli, ["alarms", "shelve", aid, "--for", "soon", "--by", "dave", *d])
    assert out.exit_code == 2 and "like 2h" in out.output
    out = r.invoke(cli, ["alarms", "unshelve", aid, "--by", "dave", *d])
    assert out.exit_code == 0 and "UNACK_RTN" in out.output
    out = r.invoke(cli, ["alarms", "ack", aid, *d])
    assert out.exit_code == 2 and "--by" in out.output


def test_out_of_service_and_back_through_the_cli(cfg):
    aid = _by_sensor(cfg)["p/l1/plc/weight"].id
    d = ["--data-dir", str(cfg.data_dir)]
    out = CliRunner().invoke(cli, ["alarms", "out-of-service", aid, "--by", "maint", "--comment", "sensor swap", *d])
    assert out.exit_code == 0 and "OUT_OF_SERVICE" in out.output
    with pytest.raises(AlarmError, match="return it to service"):
        alarm_ops.acknowledge(cfg, aid, "ann")
    out = CliRunner().invoke(cli, ["alarms", "in-service", aid, "--by", "maint", *d])
    assert out.exit_code == 0 and "UNACK_RTN" in out.output
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        kinds = [(e.kind, e.as_dict()[f"{ev_mod.NS}:by"]) for e in led.events() if e.kind in ev_mod.ALARM_KINDS]
    assert kinds[-2:] == [(ev_mod.ALARM_REMOVED, "maint"), (ev_mod.ALARM_RESTORED, "maint")]


def test_alarms_left_active_by_a_killed_run_are_cleared_with_the_reason_on_restart(tmp_path):
    from ingest.episodes import EpisodeOpened

    cfg = Config(data_dir=tmp_path)
    first = alarm_ops.AlarmFeed(cfg)
    raised = [f for f in first([EpisodeOpened("p/l1/plc/weight", T0, int(Flag.SPEC_HIGH), "L0001")])
              if not isinstance(f, EpisodeOpened)]
    with Ledger(ledger_path(tmp_path)) as led:
        led.append_many(alarm_ops.alarm_events(raised))
    assert [v.state for v in alarm_ops.list_alarms(cfg)] == ["UNACK_ACTIVE"]  # ...and then the run was killed
    with Ledger(ledger_path(tmp_path)) as led:
        restarted = alarm_ops.AlarmFeed(cfg, ledger=led)
        out = restarted([])
        led.append_many(alarm_ops.alarm_events(out))
    assert [(t.action, t.alarm.id) for t in out] == [(alarm_ops.Action.CLEAR, raised[0].alarm.id)]
    assert "restarted" in out[0].comment
    assert [v.state for v in alarm_ops.list_alarms(cfg)] == ["UNACK_RTN"]
    assert restarted([]) == [] and restarted.close() == []
