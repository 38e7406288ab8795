"""The real causal path, end to end on the Simulation Engine: SmolLM2-135M-Instruct tuned with
FedSpine on the bundled instruction set (`--preset llm-smoke`), then one device's pruned model
exported, reloaded with stock transformers and asked a held-out question."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedspine.config import load_config
from fedspine.export_device import export_device
from fedspine.flower.simulation import simulate
from fedspine.generate_text import generate_text
from fedspine.report.record import read_rounds, read_summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    return simulate(load_config("llm-smoke"), tmp_path_factory.mktemp("llm") / "fedspine")


def test_llm_smoke_tunes_above_the_untuned_base_and_prunes_every_device(llm_run):
    summary = read_summary(llm_run)
    assert summary["task"] == "generate"
    assert summary["final_score"] > summary["base_score"]
    assert all(d["prune_ratio"] == pytest.approx(0.1, abs=0.01) for d in summary["devices"])
    assert set(summary["per_category"]) == {
        "capital",
        "definition",
        "pronunciation",
        "sotu_era",
        "subject",
    }
    assert read_rounds(llm_run)[-1].get("final_round") is True


def test_an_exported_pruned_smollm2_loads_with_stock_transformers_and_answers(llm_run, tmp_path):
    out = export_device(llm_run, 0, tmp_path / "device0")
    info = json.loads((out / "fedspine_pruning.json").read_text())
    assert info["stock_loadable"] is True
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    # pruned, in a stock config: at a 10% target SmolLM2 keeps its 9 heads (they go a kv group
    # at a time) and its FFN channels make up the target
    assert model.config.intermediate_size < 1536
    assert model.config.num_attention_heads <= 9
    answer = generate_text(out, "Give the ARPAbet pronunciation of 'water'.", max_new_tokens=12)
    assert answer.strip()
