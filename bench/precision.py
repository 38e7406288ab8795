"""Local training speed of fp32 vs bf16 autocast (`train.precision`), side by side.

One device's round on the real SmolLM2-135M-Instruct (`--preset llm-smoke` data and shapes), no
pruning, the same plan, seed and examples for both; alternating, median of repeats, one torch
thread. Prints tokens/s of each, the ratio, and the probe loss after training (to show bf16
learns the same).

    python bench/precision.py [--steps 6] [--repeats 3] [--preset llm-smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from fedspine.config import load_config
from fedspine.device_round import run_device_round
from fedspine.evaluation import full_kept
from fedspine.logs import quiet_logs
from fedspine.protocol import DevicePlan, Downlink
from fedspine.resources import build_resources


def with_precision(res, precision: str):
    config = res.config
    train = dataclasses.replace(config.train, precision=precision)
    return dataclasses.replace(res, config=dataclasses.replace(config, train=train))


def one_round(res, steps: int) -> dict:
    plan = DevicePlan(1, res.config.model.lora_rank, local_steps=steps)
    report = run_device_round(
        res, res.fleet[0], Downlink(plan, full_kept(res), {}, {})
    ).uplink.report
    if not report.ok:
        raise SystemExit(f"device round failed: {report.error}")
    return {
        "tokens_per_s": report.train_tokens / report.train_wall_s,
        "loss_before": report.loss_before,
        "loss_after": report.loss_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llm-smoke")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    torch.set_num_threads(1)
    base = build_resources(load_config(args.preset))
    variants = {p: with_precision(base, p) for p in ("fp32", "bf16")}
    runs: dict[str, list[dict]] = {p: [] for p in variants}
    for _ in range(args.repeats):
        for precision, res in variants.items():
            runs[precision].append(one_round(res, args.steps))
    result = {
        p: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "loss_before": rs[0]["loss_before"],
            "loss_after": rs[0]["loss_after"],
        }
        for p, rs in runs.items()
    }
    result["bf16_speedup"] = result["bf16"]["tokens_per_s"] / result["fp32"]["tokens_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
