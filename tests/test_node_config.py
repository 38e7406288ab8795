"""A SuperNode's node config: parsed into typed settings, written back by deploy-local."""

import pytest
from flwr.common.config import parse_config_args

from fedspine.deploy.node_config import NodeSettings, node_settings, to_node_config
from fedspine.errors import ConfigError


def test_written_node_config_reads_back_through_flowers_parser():
    settings = NodeSettings(
        3,
        data_path="/data dir/node 3.jsonl",
        columns=(("text_column", "body"), ("label_column", "kind")),
        memory_budget_mb=512.0,
        slowdown=4.0,
        state_dir="/var/fedspine",
        tier="rpi5",
    )
    parsed = parse_config_args([to_node_config(settings)])
    assert parsed["data-path"] == "/data dir/node 3.jsonl"
    assert node_settings(parsed) == settings
    assert settings.column("text_column", "text") == "body"
    assert settings.column("response_column", "response") == "response"


def test_simulation_node_config_gives_defaults():
    settings = node_settings({"partition-id": 2, "num-partitions": 8})
    assert (settings.partition_id, settings.data_path, settings.slowdown) == (2, "", 1.0)
    assert settings.memory_budget_mb == 0.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "needs partition-id"),
        ({"partition-id": 1.5}, "must be an integer"),
        ({"partition-id": 0, "slowdown": 0.5}, "slowdown=0.5 must be a number >= 1"),
        ({"partition-id": 0, "memory-budget-mb": "lots"}, "memory-budget-mb='lots'"),
    ],
)
def test_bad_node_config_is_one_clear_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        node_settings(raw)
