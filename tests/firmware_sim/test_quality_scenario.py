"""The detection-quality scenario: enough labelled faults of every scored kind, none overlapping on a sensor."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

from firmware_sim.scenario import load_scenario

SCORED = ("spike", "level_shift", "drift", "stuck", "dropout", "door_open", "compressor_failure")


def test_quality_scenario_has_twenty_plus_faults_of_each_scored_kind_apart_on_each_sensor():
    sc = load_scenario("quality")
    counts = Counter(f.kind for f in sc.faults)
    assert all(counts[k] >= 20 for k in SCORED), counts
    assert set(counts) <= set(SCORED)
    spans = defaultdict(list)
    for f in sc.faults:
        spans[f.target].append((f.at_s, f.at_s + f.duration_s))
    for target, ss in spans.items():
        ss.sort()
        for (_, end), (start, _) in itertools.pairwise(ss):
            assert start - end >= 60, f"{target}: faults less than 60 s apart"


def test_quality_faults_keep_clear_of_setpoint_changes():
    sc = load_scenario("quality")
    changes = {f"{site.name}/{line.name}/{dev.name}/{tag.name}": [s.at_s for s in tag.setpoints]
               for site in sc.sites for line in site.lines for dev in line.devices for tag in dev.tags if tag.setpoints}
    assert len(changes) >= 3
    for f in sc.faults:
        for at in changes.get(f.target, ()):
            clear = f.at_s + f.duration_s < at - 60 or f.at_s > at + 600
            assert clear, f"{f.kind} on {f.target} at {f.at_s} s, setpoint change at {at} s"
