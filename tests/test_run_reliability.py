"""Whole runs (real MiniLM, devices in process) with faults, churn and an interrupted server."""

from __future__ import annotations

import json
import math

import pytest

from fedspine.config import load_config
from fedspine.fleet.faults import availability_spec_from, is_away
from fedspine.report.record import read_rounds
from fedspine.resources import build_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.run import run_federation
from local_channel import SMALL_RUN, LocalChannel, without_wall_fields

SMALL = SMALL_RUN


def _run(tmp_path, name, settings, channel_class=LocalChannel, resume=False):
    config = load_config("smoke", overrides=[*SMALL, *settings])
    run_dir = RunDirectory(tmp_path / name, reopen=resume)
    summary = run_federation(channel_class(build_resources(config)), config, run_dir, resume=resume)
    return config, summary, read_rounds(run_dir.path)


def test_faults_and_a_deadline_never_stop_a_run_and_are_all_recorded(tmp_path):
    settings = ["fleet.dropout_prob=0.3", "fleet.crash_prob=0.2", "run.round_deadline_s=1.0"]
    _, summary, rows = _run(tmp_path, "faulty", settings)
    statuses = [p["status"] for r in rows for p in r["participants"]]
    assert {"dropped", "crashed"} <= set(statuses)
    assert summary["reply_outcomes"] == {s: statuses.count(s) for s in set(statuses)}
    for row in rows:
        assert row["outcomes"] == {
            s: sum(p["status"] == s for p in row["participants"]) for s in row["outcomes"]
        }
        assert row["sim_time_s"] > 0 and all(p["time_s"] <= 1.0 for p in row["participants"])
        if any(p["status"] != "ok" for p in row["participants"]):
            assert row["participants"] and max(p["time_s"] for p in row["participants"]) == 1.0
    assert math.isfinite(summary["final_accuracy"]) and math.isfinite(summary["global_accuracy"])


def test_late_joiners_and_absent_devices_are_served_and_all_end_at_the_target(tmp_path):
    settings = ["fleet.away_share=0.3", "fleet.arriving_devices=2", "fleet.arrival_round=2"]
    config, summary, rows = _run(tmp_path, "churn", settings)
    availability = availability_spec_from(config.fleet, config.run.seed, config.run.rounds)
    for row in rows:
        for p in row["participants"]:
            assert not is_away(availability, p["device"], row["round"])
    assert not {4, 5} & {p["device"] for p in rows[0]["participants"]}
    assert len(summary["devices"]) == 6
    assert all(d["prune_ratio"] == pytest.approx(0.5, abs=1e-6) for d in summary["devices"])


class _StopAfter(Exception):
    pass


def _failing_after(train_calls: int):
    class Interrupted(LocalChannel):
        """The server process dies inside round `train_calls` (mid-round, replies lost)."""

        calls = 0

        def train(self, downlinks):
            Interrupted.calls += 1
            if Interrupted.calls == train_calls:
                raise _StopAfter
            return super().train(downlinks)

    return Interrupted


@pytest.mark.parametrize("method", ["fedspine", "hetlora"])
def test_an_interrupted_server_resumes_to_the_uninterrupted_record(tmp_path, method):
    settings = [f"run.method={method}", "fleet.dropout_prob=0.2"]
    _, straight, straight_rows = _run(tmp_path, "straight", settings)
    with pytest.raises(_StopAfter):
        _run(tmp_path, "cut", settings, _failing_after(3))
    assert len(read_rounds(tmp_path / "cut.partial")) == 2
    _, resumed, resumed_rows = _run(tmp_path, "cut", settings, resume=True)
    assert without_wall_fields(resumed_rows) == without_wall_fields(straight_rows)
    for key in ("final_accuracy", "global_accuracy", "sim_time_s", "mean_sparsity", "devices"):
        assert json.dumps(resumed[key]) == json.dumps(straight[key])


def test_without_catch_up_devices_end_where_their_rounds_left_them(tmp_path):
    """pruning.catch_up=false (the paper's setting): no catch-up round; a device never
    sampled stays unpruned, and every device reports the sparsity it really reached."""
    settings = ["run.method=fedspine", "pruning.catch_up=false", "run.rounds=1"]
    _, summary, rows = _run(tmp_path, "no-catch-up", settings)
    assert len(rows) == 1 and not any(r.get("final_round") for r in rows)
    sampled = {p["device"]: p["prune_ratio"] for p in rows[0]["participants"] if p["ok"]}
    for device in summary["devices"]:
        assert device["prune_ratio"] == pytest.approx(sampled.get(device["id"], 0.0))
    assert any(d["prune_ratio"] == 0.0 for d in summary["devices"])  # 3 of 6 never sampled
