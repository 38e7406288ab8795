"""Config: presets, TOML files and --set overrides resolve and validate with clear errors."""

import pytest

from fedspine.config import (
    PRESETS,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    load_config,
)
from fedspine.errors import ConfigError
from fedspine.fleet.profiles import parse_tiers


def test_presets_resolve_and_differ():
    smoke, default = load_config("smoke"), load_config("default")
    assert smoke.fleet.num_devices < default.fleet.num_devices == 80
    assert set(PRESETS) >= {"smoke", "default", "paper"}
    assert load_config("paper").data.dataset == "sotu"


def test_set_overrides_are_typed():
    config = load_config(
        "smoke", overrides=["run.rounds=7", "data.iid=true", "train.learning_rate=0.01"]
    )
    assert config.run.rounds == 7 and config.data.iid is True
    assert config.train.learning_rate == pytest.approx(0.01)


def test_toml_file_then_set_override(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nrounds = 3\nmethod = "fedlora"\n[data]\nmax_seq_len = 32\n')
    config = load_config("default", path, ["run.rounds=5"])
    assert (config.run.rounds, config.run.method, config.data.max_seq_len) == (5, "fedlora", 32)


def test_round_trip_through_dict_and_toml():
    config = load_config("smoke")
    assert config_from_dict(config_to_dict(config)) == config
    assert "[pruning]" in config_to_toml(config)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["run.rounds=0"], "run.rounds"),
        (["run.rounds=abc"], "not a valid int"),
        (["run.method=fedmagic"], "run.method"),
        (["pruning.target_sparsity=1.5"], "pruning.target_sparsity"),
        (["data.test_fraction=0"], "data.test_fraction"),
        (["bandit.rank_min=32"], "bandit.rank_min"),
        (["nosection.key=1"], "unknown config section"),
        (["run.nokey=1"], "unknown key run.nokey"),
        (["rounds=3"], "section.key=value"),
        (["fleet.tiers=tx2:fast:8:3"], "name:TFLOPs:GB:count"),
        (["run.time_budget_s=-1"], "run.time_budget_s"),
        (["train.lr_decay=0"], "train.lr_decay"),
        (["train.lr_decay=1.5"], "train.lr_decay"),
        (["train.logit_adjustment=-1"], "train.logit_adjustment"),
        (["train.server_learning_rate=0"], "train.server_learning_rate"),
        (["train.server_learning_rate=1.5"], "train.server_learning_rate"),
        (["run.time_budget_s=nan"], "run.time_budget_s"),
        (["run.time_budget_s=30", "run.max_rounds=2"], "run.max_rounds"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("smoke", overrides=overrides)


def test_round_limit_is_rounds_without_a_budget_and_the_cap_with_one():
    assert load_config("smoke").run.round_limit == 4
    assert load_config("smoke", overrides=["run.max_rounds=9"]).run.round_limit == 4
    assert load_config("smoke", overrides=["run.time_budget_s=30"]).run.round_limit == 12
    budget = ["run.time_budget_s=30", "run.max_rounds=9"]
    assert load_config("smoke", overrides=budget).run.round_limit == 9


def test_bad_files_and_presets(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("smoke", tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[run\nrounds=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config("smoke", broken)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")


def test_default_tiers_are_the_papers_fleet():
    tiers = parse_tiers(load_config("default").fleet.tiers)
    assert [(name, count) for name, _, _, count in tiers] == [
        ("tx2", 30),
        ("xavier-nx", 40),
        ("agx-xavier", 10),
    ]


def test_auto_precision_is_resolved_once_to_what_the_cpu_computes_natively(monkeypatch):
    import fedspine.config as config_module

    for native in ("bf16", "fp32"):
        monkeypatch.setattr(config_module, "native_precision", lambda native=native: native)
        config = load_config("smoke", overrides=["train.precision=auto"])
        assert config.train.precision == native  # what config.toml and the workers see
    assert load_config("smoke", overrides=["train.precision=fp32"]).train.precision == "fp32"
    assert load_config("default").train.precision == "fp32"  # the main job's auto, resolved
    with pytest.raises(ConfigError, match="train.precision must be one of: auto, fp32, bf16"):
        load_config("smoke", overrides=["train.precision=fp16"])
