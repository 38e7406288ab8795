"""Inference latency and size of pruned MiniLM (or a local HF model dir) next to the full model.

Usage: PYTHONPATH=src python bench/inference.py [--model DIR] [--sparsity 0.25 0.5] [--batch 8]
       [--seq-len 128] [--threads 2] [--repeats 20] [--warmup 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

from fedspine.bench_inference import format_bench_table, run_bench_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="local HF model dir (default: bundled MiniLM)"
    )
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    result = run_bench_inference(
        args.model, args.sparsity, args.batch, args.seq_len, args.repeats, args.warmup, args.threads
    )
    print(format_bench_table(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
