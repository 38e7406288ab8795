"""Export a pruned (peft) model as a Hugging Face model directory, and load it back.

The LoRA is merged into a *copy* of the pruned model (the device model may share tensors with
the frozen base, see `build_pruned_model`). Beside the usual files, ``fedspine_pruning.json``
holds the kept-index map and ``loader`` (which loader below reads the export), and config.json
holds ``fedspine_layer_widths`` (the per-layer widths).

Which loader reads an export (``loader`` in fedspine_pruning.json):
- ``"stock"``: decoders (LLaMA, Qwen2, Mistral, Gemma 3) with uniform widths, and encoders
  (BERT, RoBERTa) with uniform widths whose heads were not pruned load with stock
  ``AutoModelForSequenceClassification.from_pretrained(dir)`` (the config carries the widths;
  decoders get an explicit ``head_dim``);
- ``"trust_remote_code"``: every other BERT/RoBERTa export (pruned heads: their attention
  derives the head size as hidden_size / num_attention_heads, so no stock config describes
  another head count; or per-layer widths). The export ships ``modeling_fedspine_encoder.py``
  (torch and transformers only) and an ``auto_map`` (model_type ``fedspine_bert`` /
  ``fedspine_roberta``), so ``AutoModelForSequenceClassification`` and ``AutoModel``
  ``.from_pretrained(dir, trust_remote_code=True)`` build it at its per-layer widths;
- ``"load_pruned"``: decoders with per-layer widths only load with `load_pruned`.
`load_pruned` reads every export (any loader, also those written before ``loader`` existed)
without running code from the directory.
The directory is written to a temporary sibling and renamed into place, so a failed export
never leaves a half-written model behind.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.initialization import no_init_weights

from fedspine.errors import ModelError
from fedspine.models.families import PRUNED_WIDTHS_FIELD, FamilyAdapter, adapter_for, unwrap_peft
from fedspine.pruning.kept import KeptIndices
from fedspine.pruning.slicing import apply_kept_

PRUNING_FILE = "fedspine_pruning.json"
PRUNING_FORMAT = 1
REMOTE_CODE_FILE = "modeling_fedspine_encoder.py"  # shipped in fedspine/pruning/hf_remote/
# Families with remote code (family name == stock model type) -> prefix of its class names there;
# the export's model_type is "fedspine_<family>".
REMOTE_CODE_FAMILIES = {"bert": "FedspineBert", "roberta": "FedspineRoberta"}


def is_stock_loadable(adapter: FamilyAdapter, kept: KeptIndices) -> bool:
    """Whether stock from_pretrained can rebuild this pruned model from its config alone."""
    if not kept.is_uniform:
        return False
    heads_pruned = any(len(k.heads) != kept.dims.num_heads for k in kept.layers)
    return adapter.has_grouped_kv or not heads_pruned


def export_loader(adapter: FamilyAdapter, kept: KeptIndices) -> str:
    """How an export of this model loads: "stock", "trust_remote_code" or "load_pruned"."""
    if is_stock_loadable(adapter, kept):
        return "stock"
    return "trust_remote_code" if adapter.name in REMOTE_CODE_FAMILIES else "load_pruned"


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain transformers model with the LoRA merged in; `model` is left untouched."""
    duplicate = copy.deepcopy(model)
    if callable(getattr(duplicate, "merge_and_unload", None)):
        duplicate = duplicate.merge_and_unload()
    return unwrap_peft(duplicate)


def export_pruned(
    model: nn.Module,
    kept: KeptIndices,
    out_dir: str | Path,
    tokenizer=None,
    pruned_for: dict | None = None,
) -> Path:
    """Merge LoRA into a copy of pruned `model` (shaped like `kept`); save it to `out_dir`.

    `pruned_for` (budget mode: the device's inference budget and own target) is recorded in
    fedspine_pruning.json."""
    out_dir = Path(out_dir)
    hf_model = merged_copy(model)
    adapter = adapter_for(hf_model)
    check_shapes(hf_model, adapter, kept)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hf_model.save_pretrained(staging)
        loader = export_loader(adapter, kept)
        if loader == "trust_remote_code":
            _add_remote_code(staging, adapter, kept)
        info = {
            "format": PRUNING_FORMAT,
            "loader": loader,
            "stock_loadable": loader == "stock",
            "kept": kept.to_dict(),
        }
        if pruned_for:
            info["pruned_for"] = pruned_for
        (staging / PRUNING_FILE).write_text(json.dumps(info))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _add_remote_code(model_dir: Path, adapter: FamilyAdapter, kept: KeptIndices) -> None:
    """Point config.json at the shipped modeling file, which builds the per-layer widths."""
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    prefix = REMOTE_CODE_FAMILIES[adapter.name]
    module = REMOTE_CODE_FILE.removesuffix(".py")
    dims = kept.dims
    config.update(
        model_type=f"fedspine_{adapter.name}",
        architectures=[f"{prefix}ForSequenceClassification"],
        auto_map={
            "AutoConfig": f"{module}.{prefix}Config",
            "AutoModel": f"{module}.{prefix}Model",
            "AutoModelForSequenceClassification": f"{module}.{prefix}ForSequenceClassification",
        },
        # the stock fields keep the unpruned widths; the real ones are per layer
        num_attention_heads=dims.num_heads,
        intermediate_size=dims.intermediate_size,
        head_dim=dims.head_dim,
        **{PRUNED_WIDTHS_FIELD: kept.layer_widths()},
    )
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    source = importlib.resources.files("fedspine.pruning") / "hf_remote" / REMOTE_CODE_FILE
    (model_dir / REMOTE_CODE_FILE).write_bytes(source.read_bytes())


def _replace_dir(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    retired.rmdir()
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def check_shapes(model: nn.Module, adapter: FamilyAdapter, kept: KeptIndices) -> None:
    """Raise unless every prunable projection has the shape `kept` implies."""
    dims = kept.dims
    for idx, layer in enumerate(adapter.layer_modules(model)):
        k = kept.layers[idx]
        expected = {
            adapter.q_proj: (len(k.heads) * dims.head_dim, dims.hidden_size),
            adapter.k_proj: (len(k.kv_heads) * dims.head_dim, dims.hidden_size),
            adapter.o_proj: (dims.hidden_size, len(k.heads) * dims.head_dim),
            adapter.ffn_out: (dims.hidden_size, len(k.channels)),
        }
        for path, shape in expected.items():
            actual = tuple(layer.get_submodule(path).weight.shape)
            if actual != shape:
                raise ModelError(
                    f"layer {idx} {path} has shape {actual}, the kept map implies {shape}; "
                    "export the model together with the kept map it was pruned with"
                )


def load_pruned(model_dir: str | Path) -> nn.Module:
    """Load a fedspine export (any widths), or a plain HF classification model directory."""
    model_dir = Path(model_dir)
    info_path = model_dir / PRUNING_FILE
    if not info_path.is_file():
        return AutoModelForSequenceClassification.from_pretrained(model_dir)
    info = json.loads(info_path.read_text())
    if info.get("format") != PRUNING_FORMAT:
        raise ModelError(f"{info_path} has format {info.get('format')}, expected {PRUNING_FORMAT}")
    kept = KeptIndices.from_dict(info["kept"])
    config = _stock_config(model_dir)
    adapter = adapter_for(config)
    full_config = copy.deepcopy(config)
    dims = kept.dims
    adapter.set_config_widths(
        full_config, dims, dims.num_heads, dims.num_kv_heads, dims.intermediate_size
    )
    full_config.__dict__.pop(PRUNED_WIDTHS_FIELD, None)
    with no_init_weights():
        model = AutoModelForSequenceClassification.from_config(full_config, dtype=config.dtype)
    apply_kept_(model, adapter, KeptIndices.full(adapter, full_config), kept)
    state = _read_safetensors(model_dir)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [key for key in missing if key not in _tied_keys(model)]
    if missing or unexpected:
        raise ModelError(
            f"{model_dir} does not match its kept map (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); re-export it"
        )
    model.tie_weights()
    return model.eval()


def _stock_config(model_dir: Path):
    """The export's config as its stock class (a remote-code export's code is not run)."""
    raw = json.loads((model_dir / "config.json").read_text())
    model_type = str(raw.get("model_type", ""))
    family = model_type.removeprefix("fedspine_")
    if family == model_type or family not in REMOTE_CODE_FAMILIES:
        return AutoConfig.from_pretrained(model_dir)
    for key in ("model_type", "auto_map", "head_dim"):
        raw.pop(key, None)
    raw["architectures"] = [name.removeprefix("Fedspine") for name in raw.get("architectures", [])]
    return AutoConfig.for_model(family, name_or_path=str(model_dir), **raw)


def _tied_keys(model: nn.Module) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return set(tied)


def _read_safetensors(model_dir: Path) -> dict:
    single = model_dir / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index_path = model_dir / "model.safetensors.index.json"
    if not index_path.is_file():
        raise ModelError(f"{model_dir} has no model.safetensors; export it with fedspine")
    shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    state: dict = {}
    for shard in shards:
        state.update(load_file(model_dir / shard))
    return state
