"""Checkpoints of the server half: a restored server continues exactly; bad checkpoints and
resume targets are clear errors; device-side state is read from the round before."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedspine.config import config_to_toml, load_config
from fedspine.device_state import DeviceStateStore
from fedspine.errors import ConfigError
from fedspine.pruning.importance import LayerScores
from fedspine.report.record import CHECKPOINT_FILE, CONFIG_FILE, SUMMARY_FILE
from fedspine.run_dir import resumable_run
from fedspine.server.checkpoint import (
    RunPosition,
    load_checkpoint,
    restore_server,
    save_checkpoint,
)
from test_server_core import make_server, register, reply


def _play(server, round_num):
    plan = server.plan_round(round_num)
    outcome = server.absorb(round_num, {n: reply(server, n, d) for n, d in plan.items()})
    return plan, outcome.rows()


@pytest.mark.parametrize("method", ["fedspine", "fedspine-random", "hetlora"])
def test_a_restored_server_continues_exactly_like_the_original(tmp_path, method):
    original = make_server(method)
    register(original)
    _play(original, 1)
    position = RunPosition(next_round=2, sim_s=12.5, rows=[{"round": 1}])
    size = save_checkpoint(tmp_path, original.config, original, position)
    assert size > 0 and not (tmp_path / (CHECKPOINT_FILE + ".tmp")).exists()
    state, saved_position = load_checkpoint(tmp_path, original.config)
    assert saved_position == position
    restored = make_server(method)  # a fresh process: same config, no registration
    restore_server(restored, state)
    for round_num in (2, 3):
        plan_a, rows_a = _play(original, round_num)
        plan_b, rows_b = _play(restored, round_num)
        assert list(plan_a) == list(plan_b)
        assert [d.plan for d in plan_a.values()] == [d.plan for d in plan_b.values()]
        assert rows_a == rows_b
    for name, factors in original.global_lora.factors.items():
        torch.testing.assert_close(restored.global_lora.factors[name].A, factors.A)
        torch.testing.assert_close(restored.global_lora.factors[name].B, factors.B)


def test_no_checkpoint_means_start_over(tmp_path):
    assert load_checkpoint(tmp_path, load_config("smoke")) is None


def test_a_checkpoint_under_another_config_names_the_difference(tmp_path):
    server = make_server()
    register(server)
    save_checkpoint(tmp_path, server.config, server, RunPosition())
    other = load_config("smoke", overrides=["run.rounds=7"])
    with pytest.raises(ConfigError, match=r"run\.rounds: 4 -> 7"):
        load_checkpoint(tmp_path, other)


def test_a_checkpoint_of_another_format_or_corrupted_is_refused(tmp_path):
    config = load_config("smoke")
    torch.save({"format": 999, "config": {}}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigError, match="format 999"):
        load_checkpoint(tmp_path, config)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable"):
        load_checkpoint(tmp_path, config)


def test_resume_targets(tmp_path):
    config = load_config("smoke")
    with pytest.raises(ConfigError, match="no interrupted run"):
        resumable_run(tmp_path / "nothing")
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / SUMMARY_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="has finished"):
        resumable_run(finished)
    partial = tmp_path / "cut.partial"
    partial.mkdir()
    with pytest.raises(ConfigError, match=CONFIG_FILE):
        resumable_run(partial)
    (partial / CONFIG_FILE).write_text(config_to_toml(config))
    for name in ("cut", "cut.partial"):  # either the --out or the partial dir it left
        out, saved = resumable_run(tmp_path / name)
        assert out == tmp_path / "cut" and saved == config


def _scores(value: float):
    return (LayerScores(torch.full((2,), value), torch.full((2,), value), torch.ones(4)),)


def test_device_state_is_read_from_the_round_before_and_kept_small(tmp_path):
    store = DeviceStateStore(tmp_path, 7)
    assert store.load(1) is None
    for round_num in (2, 5, 9):
        store.save(round_num, _scores(float(round_num)))
    # a round re-run after a resume starts from what it started from the first time
    assert float(store.load(9)[0].heads[0]) == 5.0
    assert float(store.load(10)[0].heads[0]) == 9.0
    assert len(list(store.folder.iterdir())) == 2
    assert dataclasses.is_dataclass(store.load(10)[0])
