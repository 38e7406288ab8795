"""Pruning engine at realistic model sizes on a GPU: exactness, size, inference and LoRA training.

fedspine is developed and tested on a 2-core CPU, where the pruning tests only reach tiny random
models and MiniLM. This script is the check at the sizes the CPU cannot reach (BERT-base,
RoBERTa-large, a ~0.8B LLaMA-style decoder; random init from config objects, nothing is
downloaded), using only the repo's own pruning path: `select_groups_to_keep` on seeded random
group scores (uniform per layer), `build_pruned_model` (a device's sliced model),
`attach_lora` + `prune_step` (pruning a peft model in place), `count_parameters`.

Per model size it measures, full model vs pruned:
 1. equivalence (fp32, TF32 off): the physically sliced model's logits equal the full model's
    with the removed heads / channels masked (o-proj and ffn-out input columns zeroed, as in
    tests/test_pruning_slicing.py), both for `build_pruned_model` on the plain model and for
    `prune_step` on a LoRA-wrapped model (LoRA B randomised, so the sliced LoRA factors count);
    pass when max |diff| <= rtol * max |logit|;
 2. parameter counts;
 3. inference latency in bf16 (median of timed forwards after warm-up, models alternated);
 4. LoRA fine-tuning step time (forward + backward + AdamW step, median) and peak memory
    (torch.cuda.max_memory_allocated, reset per model), rank 8 on the family's LoRA targets.
Each measurement is printed (flushed) as it finishes and the JSON is rewritten after each one,
so a timeout keeps what was done. Exit code 1 if any equivalence check fails or errors.

Usage (repo root):
    PYTHONPATH=src python bench/gpu_scale.py [--sizes bert-base roberta-large llama-0.8b]
        [--sparsity 0.5] [--batch 8] [--seq-len 128] [--device cuda] [--json OUT.json]
    PYTHONPATH=src python bench/gpu_scale.py --tiny --device cpu --json /tmp/t.json  # CPU self-test

Imports only torch, transformers, peft and fedspine's pruning / family / LoRA-attach modules
(no flwr, ray, tomli_w, fedspine.config or fedspine.cli), so it runs on a bare GPU box.
"""

# ruff: noqa: E402  (the fedspine imports follow the sys.path fallback below)
from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import peft
import torch
import transformers
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForSequenceClassification

# Run without PYTHONPATH=src too (fedspine need not be installed on the GPU machine).
_SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("fedspine") is None and _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

from fedspine.lora.peft_io import attach_lora
from fedspine.models.families import FamilyAdapter, adapter_for, tiny_config
from fedspine.pruning.importance import LayerScores, ModelScores
from fedspine.pruning.kept import KeptIndices
from fedspine.pruning.selection import prune_step, select_groups_to_keep
from fedspine.pruning.slicing import build_pruned_model
from fedspine.pruning.sparsity import count_parameters

# name -> (model_type, config overrides on top of fedspine's tiny_config: 2 labels, pad id 0,
# encoder dropout 0). Real checkpoints' widths; random init.
SIZES: dict[str, tuple[str, dict]] = {
    "bert-base": (
        "bert",
        {
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
    ),
    "roberta-large": (
        "roberta",
        {
            "vocab_size": 50265,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "max_position_embeddings": 514,
        },
    ),
    # TinyLlama-1.1B widths with 16 instead of 22 layers and 16 instead of 32 heads (head_dim
    # 128); grouped-query attention, 4 query heads per kv head. ~0.79B parameters.
    "llama-0.8b": (
        "llama",
        {
            "vocab_size": 32000,
            "hidden_size": 2048,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "intermediate_size": 5632,
            "max_position_embeddings": 2048,
        },
    ),
    # Optional (not in the default list): Qwen2-1.5B widths, explicit head_dim, 6 q per kv head.
    "qwen2-1.5b": (
        "qwen2",
        {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "head_dim": 128,
            "intermediate_size": 8960,
            "max_position_embeddings": 4096,
        },
    ),
}
DEFAULT_SIZES = ("bert-base", "roberta-large", "llama-0.8b")
TINY = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
FULL_RUN = {
    "batch": 8,
    "seq_len": 128,
    "warmup": 5,
    "repeats": 30,
    "train_warmup": 3,
    "train_repeats": 10,
}
TINY_RUN = {
    "batch": 2,
    "seq_len": 32,
    "warmup": 1,
    "repeats": 5,
    "train_warmup": 1,
    "train_repeats": 3,
}
TINY_KV_HEADS = {"llama": 2, "qwen2": 2}  # GQA kept in the tiny decoders
TINY_HEAD_DIM = {"qwen2": 32}  # != hidden / heads, as in the real Qwen2


def make_config(name: str, tiny: bool):
    model_type, overrides = SIZES[name]
    if tiny:
        overrides = dict(TINY)
        if model_type in TINY_KV_HEADS:
            overrides["num_key_value_heads"] = TINY_KV_HEADS[model_type]
        if model_type in TINY_HEAD_DIM:
            overrides["head_dim"] = TINY_HEAD_DIM[model_type]
        overrides["max_position_embeddings"] = 514 if model_type == "roberta" else 512
    return tiny_config(model_type, **overrides)


def build_model(config, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Random-init classifier built directly on `device` (seed 0: the same weights every call)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    return model.to(device)


def random_scores(kept: KeptIndices, seed: int) -> ModelScores:
    """Seeded random group scores (in place of a learned importance)."""
    dims = kept.dims
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        LayerScores(
            heads=torch.rand(dims.num_heads, generator=generator),
            kv_heads=torch.rand(dims.num_kv_heads, generator=generator),
            channels=torch.rand(dims.intermediate_size, generator=generator),
        )
        for _ in range(dims.num_layers)
    )


def masked_copy(model: nn.Module, adapter: FamilyAdapter, kept: KeptIndices) -> nn.Module:
    """The full model with the o-proj input columns of removed heads and the ffn-out input columns
    of removed channels zeroed (base weight and, for LoRA layers, every lora_A): what a pruned
    model must compute (tests/test_pruning_slicing.py::_masked_copy, extended to LoRA)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for idx, layer in enumerate(adapter.layer_modules(masked)):
            for path, keep in (
                (adapter.o_proj, kept.head_rows(idx)),
                (adapter.ffn_out, kept.channel_index(idx)),
            ):
                module = layer.get_submodule(path)
                if isinstance(module, LoraLayer):
                    weights = [module.get_base_layer().weight]
                    weights += [lora_a.weight for lora_a in module.lora_A.values()]
                else:
                    weights = [module.weight]
                for weight in weights:
                    mask = torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
                    mask[keep.to(weight.device)] = 1.0
                    weight.mul_(mask)
    return masked


def random_inputs(config, batch: int, seq_len: int, device: torch.device, labels: bool = False):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (batch, seq_len), generator=generator)
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if labels:
        inputs["labels"] = torch.randint(0, config.num_labels, (batch,), generator=generator).to(
            device
        )
    return inputs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compare(actual: torch.Tensor, expected: torch.Tensor, unpruned: torch.Tensor, rtol: float):
    scale = float(expected.abs().max())
    diff = float((actual.float() - expected.float()).abs().max())
    effect = float((actual.float() - unpruned.float()).abs().max())
    return {
        "max_abs_diff": diff,
        "logit_scale": scale,
        "rel_diff": diff / max(scale, 1e-12),
        "passed": bool(diff <= rtol * max(scale, 1e-12)),
        # How far pruning moved the logits (should be >> max_abs_diff: the removed groups mattered)
        "pruned_vs_full_max_abs": effect,
    }


# ----- phases ---------------------------------------------------------------------------------
def phase_equivalence(config, kept, scores, args, device) -> dict:
    """fp32: build_pruned_model vs masked; then prune_step on a LoRA model vs masked LoRA model."""
    base = build_model(config, device, torch.float32).eval()
    adapter = adapter_for(base)
    full = KeptIndices.full(adapter, base.config)
    inputs = random_inputs(config, args.eq_batch, args.eq_seq_len, device)
    result = {"attn_implementation": getattr(base.config, "_attn_implementation", None)}
    with torch.no_grad():
        unpruned = base(**inputs).logits
        masked = masked_copy(base, adapter, kept).eval()
        expected = masked(**inputs).logits
        del masked
        start = time.perf_counter()
        pruned = build_pruned_model(base, kept).eval()
        sync(device)
        result["build_pruned_model_s"] = time.perf_counter() - start
        actual = pruned(**inputs).logits
    result["plain"] = compare(actual, expected, unpruned, args.rtol)
    full_counts, pruned_counts = count_parameters(base), count_parameters(pruned)
    result["params"] = {
        "full": full_counts["params"],
        "pruned": pruned_counts["params"],
        "ratio": pruned_counts["params"] / full_counts["params"],
        "non_embedding_full": full_counts["non_embedding_params"],
        "non_embedding_pruned": pruned_counts["non_embedding_params"],
        "non_embedding_ratio": pruned_counts["non_embedding_params"]
        / full_counts["non_embedding_params"],
    }
    widths = pruned.config
    result["pruned_config"] = {
        "num_attention_heads": widths.num_attention_heads,
        "num_key_value_heads": getattr(widths, "num_key_value_heads", None),
        "intermediate_size": widths.intermediate_size,
    }
    del pruned, actual, expected
    free(device)

    # LoRA path: the device-side in-place step on a peft model (LoRA B made non-zero).
    peft_model = attach_lora(base, adapter, args.rank, 2.0, 0.0, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                noise = torch.randn(param.shape, generator=generator) * args.lora_b_std
                param.copy_(noise.to(param.device, param.dtype))
    peft_model.eval()
    with torch.no_grad():
        unpruned = peft_model(**inputs).logits
        masked = masked_copy(peft_model, adapter, kept).eval()
        expected = masked(**inputs).logits
        del masked
        free(device)
        start = time.perf_counter()
        stepped = prune_step(peft_model, adapter, scores, full, args.sparsity, "uniform")
        sync(device)
        result["prune_step_s"] = time.perf_counter() - start
        actual = peft_model(**inputs).logits
    result["lora_prune_step"] = compare(actual, expected, unpruned, args.rtol)
    result["lora_prune_step"]["same_kept_as_selection"] = stepped == kept
    result["passed"] = result["plain"]["passed"] and result["lora_prune_step"]["passed"]
    del peft_model, base
    free(device)
    return result


def phase_inference(config, kept, args, device) -> dict:
    """bf16 forward latency, full and pruned alternated, median after warm-up."""
    base = build_model(config, device, torch.bfloat16).eval()
    pruned = build_pruned_model(base, kept).eval()
    inputs = random_inputs(config, args.batch, args.seq_len, device)
    models = [base, pruned]
    timings: list[list[float]] = [[], []]
    with torch.inference_mode():
        for _ in range(args.warmup):
            for model in models:
                model(**inputs)
        sync(device)
        for _ in range(args.repeats):
            for idx, model in enumerate(models):
                sync(device)
                start = time.perf_counter()
                model(**inputs)
                sync(device)
                timings[idx].append((time.perf_counter() - start) * 1000.0)
    full_ms, pruned_ms = (statistics.median(t) for t in timings)
    del models, base, pruned
    free(device)
    return {
        "dtype": "bfloat16",
        "full_ms": full_ms,
        "pruned_ms": pruned_ms,
        "ratio": pruned_ms / full_ms,
        "full_ms_all": timings[0],
        "pruned_ms_all": timings[1],
    }


def train_one(config, kept: KeptIndices | None, args, device) -> dict:
    """Median LoRA step time and peak memory of one model (only it resident on the device)."""
    weight_dtype = torch.bfloat16 if args.train_precision == "bf16" else torch.float32
    base = build_model(config, device, weight_dtype)
    adapter = adapter_for(base)
    model = base if kept is None else build_pruned_model(base, kept)
    del base  # the pruned model keeps only the tensors it shares (embeddings, norms, head)
    free(device)
    peft_model = attach_lora(model, adapter, args.rank, 2.0, 0.0, seed=0).train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    batch = random_inputs(config, args.batch, args.seq_len, device, labels=True)
    use_autocast = args.train_precision in ("autocast", "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    times = []
    for step in range(args.train_warmup + args.train_repeats):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.train_warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    result = {
        "step_ms": statistics.median(times),
        "step_ms_all": times,
        "loss": loss.item(),
        "trainable_params": sum(p.numel() for p in trainable),
        "peak_mib": None,
        "resident_before_mib": None,
    }
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["resident_before_mib"] = resident / 2**20
    del peft_model, model, optimizer, trainable, loss
    free(device)
    return result


def phase_training(config, kept, args, device) -> dict:
    full = train_one(config, None, args, device)
    pruned = train_one(config, kept, args, device)
    result = {"precision": args.train_precision, "rank": args.rank, "full": full, "pruned": pruned}
    result["step_ratio"] = pruned["step_ms"] / full["step_ms"]
    if full["peak_mib"]:
        result["peak_ratio"] = pruned["peak_mib"] / full["peak_mib"]
    return result


# ----- driver ---------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
    }
    return env


def log(message: str) -> None:
    print(message, flush=True)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2))


def run_size(name: str, args, device: torch.device, record: dict, save) -> None:
    config = make_config(name, args.tiny)
    adapter = adapter_for(config)
    full = KeptIndices.full(adapter, config)
    scores = random_scores(full, args.seed)
    kept = select_groups_to_keep(scores, full, args.sparsity, "uniform")
    record["model_type"] = config.model_type
    record["dims"] = vars(full.dims) | {"vocab_size": config.vocab_size}
    record["kept_widths"] = kept.layer_widths()[0]
    record["kept_uniform"] = kept.is_uniform
    log(f"\n== {name} ({config.model_type}) dims {record['dims']} -> kept {record['kept_widths']}")
    phases = [("equivalence", lambda: phase_equivalence(config, kept, scores, args, device))]
    if not args.skip_timing:
        phases += [
            ("inference", lambda: phase_inference(config, kept, args, device)),
            ("training", lambda: phase_training(config, kept, args, device)),
        ]
    for phase, run in phases:
        start = time.perf_counter()
        try:
            record[phase] = run()
        except Exception as err:  # keep going: one failure must not lose the other figures
            record[phase] = {
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc(),
            }
            log(f"  {phase}: ERROR {type(err).__name__}: {err}")
            log(traceback.format_exc())
            free(device)
        record[phase]["wall_s"] = time.perf_counter() - start
        log(f"  {phase}: {summary_line(phase, record[phase])}")
        save()


def summary_line(phase: str, data: dict) -> str:
    if "error" in data:
        return f"error ({data['wall_s']:.1f}s)"
    if phase == "equivalence":
        plain, lora = data["plain"], data["lora_prune_step"]
        params = data["params"]
        return (
            f"plain rel {plain['rel_diff']:.2e} {'PASS' if plain['passed'] else 'FAIL'}, "
            f"lora prune_step rel {lora['rel_diff']:.2e} {'PASS' if lora['passed'] else 'FAIL'} "
            f"(pruning moved logits by {plain['pruned_vs_full_max_abs']:.3g}); params "
            f"{params['full'] / 1e6:.1f}M -> {params['pruned'] / 1e6:.1f}M "
            f"({params['ratio']:.3f}x; {data['wall_s']:.1f}s)"
        )
    if phase == "inference":
        return (
            f"bf16 {data['full_ms']:.2f} ms -> {data['pruned_ms']:.2f} ms "
            f"({data['ratio']:.3f}x; {data['wall_s']:.1f}s)"
        )
    full, pruned = data["full"], data["pruned"]
    memory = ""
    if full["peak_mib"]:
        memory = (
            f", peak {full['peak_mib']:.0f} MiB -> {pruned['peak_mib']:.0f} MiB "
            f"({data['peak_ratio']:.3f}x)"
        )
    return (
        f"LoRA step {full['step_ms']:.2f} ms -> {pruned['step_ms']:.2f} ms "
        f"({data['step_ratio']:.3f}x){memory} ({data['wall_s']:.1f}s)"
    )


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pair(full, pruned, spec: str) -> str:
    return f"{_fmt(full, spec)} -> {_fmt(pruned, spec)}"


def table(results: dict) -> str:
    """One row per size: full -> pruned figures and pruned/full ratios ("-": not measured)."""
    header = [
        "size", "equiv", "rel diff", "lora rel", "params M", "x",
        "infer ms", "x", "train ms", "x", "peak MiB", "x",
    ]  # fmt: skip
    rows = [header]
    for name, rec in results.items():
        eq, inf, tr = (rec.get(k, {}) for k in ("equivalence", "inference", "training"))
        plain, lora, params = eq.get("plain", {}), eq.get("lora_prune_step", {}), eq.get("params")
        full_tr, pruned_tr = tr.get("full", {}), tr.get("pruned", {})
        status = "ERR" if "error" in eq or not eq else ("PASS" if eq.get("passed") else "FAIL")
        rows.append(
            [
                name,
                status,
                _fmt(plain.get("rel_diff"), ".1e"),
                _fmt(lora.get("rel_diff"), ".1e"),
                _pair(params and params["full"] / 1e6, params and params["pruned"] / 1e6, ".4g"),
                _fmt(params and params["ratio"], ".3f"),
                _pair(inf.get("full_ms"), inf.get("pruned_ms"), ".2f"),
                _fmt(inf.get("ratio"), ".3f"),
                _pair(full_tr.get("step_ms"), pruned_tr.get("step_ms"), ".2f"),
                _fmt(tr.get("step_ratio"), ".3f"),
                _pair(full_tr.get("peak_mib"), pruned_tr.get("peak_mib"), ".0f"),
                _fmt(tr.get("peak_ratio"), ".3f"),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if col else cell.ljust(width)
            for col, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(DEFAULT_SIZES))
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (CPU self-test)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random group scores")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu"
    )
    # Timing sizes/repeats: None = the full-size default, or the small --tiny one (TINY_RUN).
    parser.add_argument("--batch", type=int, default=None, help="default 8 (tiny: 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="default 128 (tiny: 32)")
    parser.add_argument("--eq-batch", type=int, default=4, help="batch of the fp32 equivalence")
    parser.add_argument("--eq-seq-len", type=int, default=64)
    parser.add_argument("--rtol", type=float, default=1e-3, help="equivalence: diff / max|logit|")
    parser.add_argument("--lora-b-std", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=None, help="inference warm-up forwards")
    parser.add_argument("--repeats", type=int, default=None, help="timed inference forwards")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--train-warmup", type=int, default=None)
    parser.add_argument("--train-repeats", type=int, default=None)
    parser.add_argument(
        "--train-precision",
        choices=("autocast", "bf16", "fp32"),
        default="autocast",
        help="autocast: fp32 weights + bf16 autocast; bf16: bf16 base weights + autocast "
        "(LoRA factors stay fp32); fp32: no autocast",
    )
    parser.add_argument("--skip-timing", action="store_true", help="equivalence and params only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the results here (rewritten per step)")
    args = parser.parse_args(argv)
    for key, value in (TINY_RUN if args.tiny else FULL_RUN).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("highest")  # the fp32 equivalence must not use TF32
    started = time.perf_counter()
    payload = {"env": environment(device), "args": vars(args), "results": {}}
    log(f"gpu_scale: {json.dumps(payload['env'])}")

    def save() -> None:
        payload["wall_s"] = time.perf_counter() - started
        write_json(args.json, payload)

    for name in args.sizes:
        record: dict = {}
        payload["results"][name + ("-tiny" if args.tiny else "")] = record
        try:
            run_size(name, args, device, record, save)
        except Exception as err:
            record["error"] = f"{type(err).__name__}: {err}"
            log(f"  {name}: ERROR {record['error']}\n{traceback.format_exc()}")
            save()
    save()
    log("\n" + table(payload["results"]))
    log(
        f"\nsparsity {args.sparsity}, batch {args.batch} x seq {args.seq_len}, device {device}, "
        f"train {args.train_precision}; total {payload['wall_s']:.1f}s"
    )
    if args.json:
        log(f"JSON written to {args.json}")
    failed = [
        name
        for name, rec in payload["results"].items()
        if "error" in rec or not rec.get("equivalence", {}).get("passed", False)
    ]
    if failed:
        log(f"EQUIVALENCE FAILED OR ERRORED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
