"""A method is one registry row: a toy method registered from outside the package runs end to
end through the Flower-free run driver, with config validation and compare reading the row."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fedspine.compare import default_methods, parse_methods
from fedspine.config import load_config
from fedspine.errors import ConfigError
from fedspine.methods.base import DeviceView
from fedspine.methods.planners import NoLearning
from fedspine.methods.registry import (
    MethodSpec,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from fedspine.protocol import DevicePlan, DeviceRecipe
from fedspine.report.record import read_rounds
from fedspine.resources import build_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.run import run_federation
from local_channel import LocalChannel

TINY = [
    "fleet.num_devices=3",
    "run.clients_per_round=2",
    "run.rounds=2",
    "train.local_steps=2",
    "data.max_train_examples=120",
    "data.max_test_examples=40",
    "data.round_eval_examples=20",
    "eval.final_eval_examples=20",
]


@dataclass
class HalfRankPlanner(NoLearning):
    """The toy method: every device trains at rank 2 and prunes to 25% in round 1."""

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        return DevicePlan(round_num, 2, 0.25)


@pytest.fixture
def toy_method():
    spec = register_method(
        MethodSpec(
            "toy-quarter",
            "rank 2, a quarter of the heads and channels pruned in round 1",
            "masked-svd",
            DeviceRecipe.PRUNE_AND_TUNE,
            lambda config, num_devices: HalfRankPlanner(),
            lambda config: 2,
        )
    )
    yield spec
    unregister_method(spec.name)


def test_a_registered_toy_method_validates_lists_and_runs(toy_method, tmp_path):
    assert get_method("toy-quarter") is toy_method and "toy-quarter" in method_names()
    assert "toy-quarter" in default_methods() and parse_methods("toy-quarter,fedlora")
    config = load_config("smoke", overrides=[*TINY, "run.method=toy-quarter"])
    run_dir = RunDirectory(tmp_path / "run")
    summary = run_federation(LocalChannel(build_resources(config)), config, run_dir)
    rows = read_rounds(run_dir.path)
    assert [r["round"] for r in rows] == [1, 2, 3]  # two rounds and the catch-up round
    first = rows[0]["participants"]
    assert all(p["ok"] and p["lora_rank"] == 2 for p in first)
    assert all(p["prune_ratio"] == pytest.approx(0.25, abs=0.02) for p in first)
    assert rows[-1].get("final_round") is True  # laggards pruned to the 50% target
    assert summary["mean_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert 0.0 <= summary["final_accuracy"] <= 1.0


def test_a_method_name_is_registered_once_and_unknown_ones_are_refused(toy_method):
    with pytest.raises(ValueError, match="already registered"):
        register_method(toy_method)
    with pytest.raises(ValueError, match="aggregation"):
        register_method(
            MethodSpec("bad", "", "no-such-rule", DeviceRecipe.NONE, lambda c, n: None, lambda c: 1)
        )
    with pytest.raises(ConfigError, match="toy-quarter"):  # the error lists registered methods
        load_config("smoke", overrides=["run.method=nope"])


PLUGIN = """
from fedspine.methods.planners import FixedPlanner
from fedspine.methods.registry import MethodSpec, register_method
from fedspine.protocol import DeviceRecipe

register_method(
    MethodSpec(
        "plugin-rank2",
        "FedIT at rank 2, registered by a module outside the package",
        "fedavg",
        DeviceRecipe.NONE,
        lambda config, num_devices: FixedPlanner(2),
        lambda config: 2,
    )
)
"""


@pytest.mark.slow
def test_a_method_from_an_outside_module_runs_on_the_simulation_engine(tmp_path, monkeypatch):
    """run.method_modules is imported wherever the config is validated: in the Ray workers
    too, which rebuild the config from the message, so the plug-in runs under `simulate`."""
    import os
    import sys

    from fedspine.flower.simulation import simulate

    (tmp_path / "toy_plugin.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    try:
        config = load_config(
            "smoke",
            overrides=[*TINY, "run.method_modules=toy_plugin", "run.method=plugin-rank2"],
        )
        run = simulate(config, tmp_path / "run")
        rows = read_rounds(run)
        assert len(rows) == 2 and all(p["ok"] for r in rows for p in r["participants"])
        assert {p["lora_rank"] for r in rows for p in r["participants"]} == {2}
    finally:
        unregister_method("plugin-rank2")
        sys.modules.pop("toy_plugin", None)


def test_an_unimportable_method_module_is_one_clear_error():
    with pytest.raises(ConfigError, match="run.method_modules: cannot import 'no_such_module_x'"):
        load_config("smoke", overrides=["run.method_modules=no_such_module_x"])
