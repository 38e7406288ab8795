"""Re-score a finished run's final device models on more of the held-out test set.

A run's final_accuracy scores every device on the same eval.final_eval_examples (64 by
default) test examples, which keeps 80 device evaluations cheap but leaves a sampling error of
about 2-3 points at 93% accuracy (one example is 1.6 points). This rebuilds each device's
final model from the run directory (its kept structure + the final global LoRA and head, as
`fedspine export` does) and scores it on the first N examples of the same held-out test set.

    python bench/rescore_final.py runs/<compare>/fedspine runs/<compare>/fedlora [--examples 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from fedspine.config import config_from_dict, read_toml
from fedspine.evaluation import evaluate_device
from fedspine.global_state import GlobalLora
from fedspine.pruning import KeptIndices
from fedspine.report.final_state import load_final_state
from fedspine.report.record import read_summary
from fedspine.resources import build_resources


def rescore(run_dir: Path, examples: int, every: int) -> dict:
    """Mean final accuracy over every `every`-th device on `examples` test examples."""
    config = config_from_dict(read_toml(run_dir / "config.toml"))
    res = build_resources(config)
    factors, head, meta, devices = load_final_state(run_dir)
    global_lora = GlobalLora(
        factors, head, float(meta["scaling"]), int(meta["max_rank"]), meta["aggregation"]
    )
    subset = res.test.subset(list(range(min(examples, len(res.test)))))
    cache: dict[str, float] = {}
    scores = []
    for device in sorted(devices, key=lambda d: d["id"])[::every]:
        key = json.dumps(device["kept"], sort_keys=True)
        if key not in cache:
            kept = KeptIndices.from_dict(device["kept"])
            cache[key] = evaluate_device(res, global_lora, kept, subset)["accuracy"]
        scores.append(cache[key])
    summary = read_summary(run_dir)
    return {
        "method": config.run.method,
        "seed": config.run.seed,
        "recorded": summary["final_accuracy"],
        "recorded_examples": config.eval.final_eval_examples,
        "rescored": statistics.fmean(scores),
        "examples": len(subset),
        "devices": len(scores),
        "global": summary.get("global_accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--examples", type=int, default=400, help="test examples per device")
    parser.add_argument("--every", type=int, default=1, help="score every k-th device only")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    header = ("run", "recorded", "(n)", "rescored", "(n)", "dev", "global")
    print("{:<49} {:>9} {:>5} {:>9} {:>5} {:>4} {:>7}".format(*header))
    for run_dir in args.run_dirs:
        row = rescore(run_dir, args.examples, args.every)
        rows.append({**row, "run_dir": str(run_dir)})
        print(
            f"{str(run_dir):<49} {100 * row['recorded']:>9.2f} {row['recorded_examples']:>5} "
            f"{100 * row['rescored']:>9.2f} {row['examples']:>5} {row['devices']:>4} "
            f"{100 * (row['global'] or 0):>7.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
