"""Budget mode: each device prunes to the least sparsity at which its deployed model meets
its own inference budget; the bandit plans the path; the record says what each device met."""

from __future__ import annotations

import pytest

from fedspine.config import load_config
from fedspine.errors import ConfigError
from fedspine.fleet.inference_budget import (
    CostPoint,
    calibrated_budget_ms,
    cost_curve,
    deployed_latency_ms,
    fit_budget,
)
from fedspine.models.families import adapter_for, tiny_config
from fedspine.pruning.kept import KeptIndices
from fedspine.report.final_state import load_global_lora
from fedspine.resources import build_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.run import run_federation
from local_channel import SMALL_RUN, LocalChannel

CURVE = tuple(CostPoint(s / 10, 1e9 * (1 - s / 10), int(1e8 * (1 - s / 20))) for s in range(9))


def test_fit_budget_takes_the_least_sparsity_that_meets_latency_and_memory():
    fast, slow = 2e12, 5e11  # FLOP/s
    assert fit_budget(CURVE, fast, 1.0).target_sparsity == 0.0  # 0.5 ms already
    fit = fit_budget(CURVE, slow, 1.2)  # 2 ms at 0%: needs 1e9 * (1 - s) / 5e11 <= 1.2e-3
    assert fit.target_sparsity == pytest.approx(0.4) and fit.meets
    assert fit.latency_ms <= 1.2
    memory = fit_budget(CURVE, fast, 10.0, memory_mb=0.9 * 1e8 / 2**20)
    assert memory.target_sparsity == pytest.approx(0.2) and memory.meets
    hopeless = fit_budget(CURVE, slow, 0.1)
    assert not hopeless.meets and hopeless.target_sparsity == CURVE[-1].sparsity


def test_the_cost_curve_falls_with_sparsity_and_matches_a_pruned_model():
    config = tiny_config("bert")
    curve = cost_curve(config, seq_len=16, max_sparsity=0.5)
    flops = [p.forward_flops for p in curve]
    assert flops == sorted(flops, reverse=True) and flops[-1] < flops[0]
    full = KeptIndices.full(adapter_for(config), config)
    assert deployed_latency_ms(config, full, 16, 1e9) == pytest.approx(1e3 * flops[0] / 1e9)
    budget = calibrated_budget_ms(curve, 1e9, 0.25)
    assert fit_budget(curve, 1e9, budget).target_sparsity == pytest.approx(0.25)


@pytest.mark.parametrize(
    "setting",
    ["pruning.target=some", "pruning.latency_budget_ms=-1", "pruning.budget_max_sparsity=1"],
)
def test_bad_budget_settings_are_config_errors(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_config("smoke", overrides=[setting])


SMALL = [*SMALL_RUN, "pruning.target=budget"]


@pytest.mark.parametrize("method", ["fedspine", "prune-then-tune"])
def test_every_device_ends_at_its_own_target_and_meets_its_budget(tmp_path, method):
    config = load_config("smoke", overrides=[*SMALL, f"run.method={method}"])
    res = build_resources(config)
    run_dir = RunDirectory(tmp_path / "run")
    summary = run_federation(LocalChannel(res), config, run_dir)
    devices = summary["devices"]
    assert all(d["meets_budget"] and d["latency_ms"] <= d["budget_ms"] for d in devices)
    assert all(d["prune_ratio"] >= d["target_sparsity"] - 1e-6 for d in devices)
    by_tier = summary["budget_by_tier"]
    # the default budget is the weakest tier's nominal device at the run's 50% target
    assert by_tier["tx2"]["sparsity"] == pytest.approx(0.5, abs=0.15)
    assert by_tier["xavier-nx"]["sparsity"] < by_tier["tx2"]["sparsity"]
    assert summary["devices_meeting_budget"] == 1.0
    _, saved = load_global_lora(run_dir.path)  # what `fedspine export` states per device
    assert [d["budget_ms"] for d in saved] == [d["budget_ms"] for d in devices]
    assert [d["target_sparsity"] for d in saved] == [d["target_sparsity"] for d in devices]


def test_uniform_mode_records_no_budget(tmp_path):
    config = load_config("smoke", overrides=SMALL_RUN)
    summary = run_federation(
        LocalChannel(build_resources(config)), config, RunDirectory(tmp_path / "run")
    )
    assert "budget_by_tier" not in summary and summary["pruning_target"] == "uniform"
    assert all("budget_ms" not in d for d in summary["devices"])
