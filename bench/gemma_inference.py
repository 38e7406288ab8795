"""Gemma 3 270M: cache build (dequantise) time, cached load time, pruned inference latency.

Usage: PYTHONPATH=src python bench/gemma_inference.py [--cache DIR] [--sparsity 0.3 0.5]
       [--batch 8] [--seq-len 128] [--threads 2] [--repeats 10] [--json OUT.json]

With --cache pointing at an empty folder the first figure is a cold build; by default the
usual cache ($FEDSPINE_CACHE or ~/.cache/fedspine) is used, and built only if missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedspine.bench_inference import format_bench_table, run_bench_inference
from fedspine.models.gemma_gguf import (
    cache_root,
    cached_gemma_dir,
    gemma_cache_dir,
    is_complete_cache,
)
from fedspine.models.loading import load_classifier


def timed_loads(root: Path) -> dict:
    """Seconds to get the cache dir (a build if it was missing) and to load it as a classifier."""
    was_cached = is_complete_cache(gemma_cache_dir(root))
    start = time.perf_counter()
    model_dir = cached_gemma_dir(root)
    cache_s = time.perf_counter() - start
    start = time.perf_counter()
    load_classifier(str(model_dir), num_labels=2)
    load_s = time.perf_counter() - start
    return {
        "model_dir": str(model_dir),
        "was_cached": was_cached,
        "cache_s": cache_s,
        "cached_load_classifier_s": load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: usual)")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loads = timed_loads(args.cache or cache_root())
    kind = "cache present" if loads["was_cached"] else "cold build (assemble + dequantise + save)"
    print(
        f"cache: {loads['cache_s']:.1f} s ({kind}); "
        f"cached load_classifier: {loads['cached_load_classifier_s']:.1f} s"
    )
    result = run_bench_inference(
        loads["model_dir"],
        args.sparsity,
        args.batch,
        args.seq_len,
        args.repeats,
        args.warmup,
        args.threads,
    )
    print(format_bench_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"loads": loads, **result}, indent=2))


if __name__ == "__main__":
    main()
