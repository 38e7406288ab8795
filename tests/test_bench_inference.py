"""Inference benchmark: result shape, ratios against the full model, table, argument checks."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from fedspine.bench_inference import format_bench_table, run_bench_inference
from fedspine.errors import ConfigError, ModelError
from fedspine.models.families import tiny_config

torch.set_num_threads(1)
ROW_KEYS = {
    "sparsity",
    "latency_ms",
    "params",
    "param_bytes",
    "non_embedding_param_bytes",
    "latency_ratio",
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert")
    config = tiny_config("bert", hidden_size=64, intermediate_size=256, num_attention_heads=8)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    return str(path)


def test_result_rows_and_ratios(tiny_model_dir):
    result = run_bench_inference(tiny_model_dir, [0.5, 0.25], 2, 16, 3, 1, 1)
    assert set(result) == {"rows", "batch", "seq_len", "threads", "model"}
    assert (result["batch"], result["seq_len"], result["threads"]) == (2, 16, 1)
    rows = result["rows"]
    assert [r["sparsity"] for r in rows] == [0.0, 0.25, 0.5]
    assert all(set(r) == ROW_KEYS for r in rows)
    assert rows[0]["latency_ratio"] == 1.0
    assert all(r["latency_ms"] > 0 for r in rows)
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert all(r["param_bytes"] == 4 * r["params"] for r in rows)
    non_embedding = rows[2]["non_embedding_param_bytes"] / rows[0]["non_embedding_param_bytes"]
    assert 0.45 < non_embedding < 0.55  # half the heads and channels; pooler/head stay


def test_default_model_is_the_bundled_minilm():
    result = run_bench_inference(None, [0.5], 1, 8, 1, 0, 1)
    assert "MiniLM" in result["model"]
    assert result["rows"][0]["params"] > 20_000_000
    ratio = (
        result["rows"][1]["non_embedding_param_bytes"]
        / result["rows"][0]["non_embedding_param_bytes"]
    )
    assert ratio <= 0.55


def test_table_lists_every_sparsity(tiny_model_dir):
    result = run_bench_inference(tiny_model_dir, [0.5], 1, 8, 1, 0, 1)
    table = format_bench_table(result)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2].split()[0] == "0.00" and lines[3].split()[0] == "0.50"
    assert "threads 1" in lines[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsities": [1.0]},
        {"batch": 0},
        {"repeats": 0},
        {"threads": 0},
        {"seq_len": 100_000},
    ],
)
def test_bad_arguments_raise_config_error(tiny_model_dir, kwargs):
    arguments = {"sparsities": [0.5], "batch": 1, "seq_len": 8, "repeats": 1, "warmup": 0}
    arguments.update(kwargs)
    with pytest.raises(ConfigError):
        run_bench_inference(tiny_model_dir, **arguments)


def test_missing_model_directory_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        run_bench_inference(str(tmp_path / "missing"), [0.5], 1, 8, 1, 0, 1)
