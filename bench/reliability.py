"""Faults, deadlines and churn on the default preset, side by side with the fault-free runs.

Runs (one after another, into OUT/<name>/; a finished run dir is reused on a rerun):
  clean-fedlora, clean-fedspine       fault-free references
  faulty-fedlora, faulty-fedspine     fleet.dropout_prob=0.2 and a round deadline that
                                      the largest configurations miss on TX2-like devices
                                      (the 75th percentile of the clean FedLoRA run's TX2
                                      round times unless --deadline is given)
  churn-fedspine                      20% of the fleet away each round, 20 devices arriving
                                      half-way
  tight-fedlora, tight-fedspine       only a tight deadline (--tight-deadline, 1 s): does the
                                      bandit learn configurations that finish in time?
and prints final accuracy against the fault-free run, each run's reply outcomes, the share of
late replies in the first and last third of the rounds, every arriving device's final
sparsity, and the checkpoint's cost (share of round wall time, size).

    python bench/reliability.py --out runs/reliability [--seed 0] [--deadline 1.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

FEDSPINE = [sys.executable, "-m", "fedspine.cli"]


def run(out: Path, name: str, method: str, seed: int, sets: list[str]) -> Path:
    run_dir = out / name
    if (run_dir / "summary.json").is_file():
        print(f"{name}: reusing {run_dir}", flush=True)
        return run_dir
    args = ["run", "--preset", "default", "--method", method, "--seed", str(seed)]
    for setting in sets:
        args += ["--set", setting]
    print(f"{name}: fedspine {' '.join(args[1:])}", flush=True)
    subprocess.run([*FEDSPINE, *args, "--out", str(run_dir)], check=True)
    return run_dir


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def tx2_deadline(run_dir: Path, quantile: float = 0.75) -> float:
    times = sorted(
        p["time_s"] for r in rows(run_dir) for p in r["participants"] if p["tier"] == "tx2"
    )
    return times[min(len(times) - 1, int(quantile * len(times)))]


def late_shares(run_dir: Path) -> tuple[float, float]:
    """Share of participants that were late, in the first and the last third of the rounds
    (the catch-up rounds excluded: every device is asked to do the same there)."""
    regular = [r for r in rows(run_dir) if not r.get("final_round")]
    third = max(1, len(regular) // 3)

    def share(chunk: list[dict]) -> float:
        parts = [p for r in chunk for p in r["participants"]]
        return sum(p.get("status") == "late" for p in parts) / max(1, len(parts))

    return share(regular[:third]), share(regular[-third:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reliability"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument(
        "--tight-deadline",
        type=float,
        default=1.0,
        help="deadline of the tight-* pair (no dropouts): most TX2 rounds of FedLoRA miss it",
    )
    args = parser.parse_args()
    out, seed = args.out, args.seed
    out.mkdir(parents=True, exist_ok=True)
    clean = {m: run(out, f"clean-{m}", m, seed, []) for m in ("fedlora", "fedspine")}
    deadline = args.deadline or round(tx2_deadline(clean["fedlora"]), 2)
    faults = [f"fleet.dropout_prob={args.dropout}", f"run.round_deadline_s={deadline}"]
    faulty = {m: run(out, f"faulty-{m}", m, seed, faults) for m in ("fedlora", "fedspine")}
    churn_sets = ["fleet.away_share=0.2", "fleet.arriving_devices=20"]
    churn = run(out, "churn-fedspine", "fedspine", seed, churn_sets)
    tight_sets = [f"run.round_deadline_s={args.tight_deadline}"]
    tight = {m: run(out, f"tight-{m}", m, seed, tight_sets) for m in ("fedlora", "fedspine")}

    print(f"\ndeadline {deadline} s (75th percentile of clean FedLoRA's TX2 round times)")
    print(
        "| run | final acc | vs fault-free | global acc | sim time (s) | outcomes | late share, "
        "first / last third | checkpoint share of round wall | checkpoint MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    runs = {
        **{f"clean-{m}": d for m, d in clean.items()},
        **{f"faulty-{m}": d for m, d in faulty.items()},
        "churn-fedspine": churn,
        **{f"tight-{m}": d for m, d in tight.items()},
    }
    for name, run_dir in runs.items():
        s = summary(run_dir)
        ref = summary(clean[name.split("-", 1)[1]])
        first, last = late_shares(run_dir)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s["reply_outcomes"].items()))
        ckpt = s["checkpoint"]
        print(
            f"| {name} | {100 * s['final_accuracy']:.1f}% | "
            f"{100 * (s['final_accuracy'] - ref['final_accuracy']):+.1f} | "
            f"{100 * s['global_accuracy']:.1f}% | {s['sim_time_s']:.1f} | {outcomes} | "
            f"{100 * first:.0f}% / {100 * last:.0f}% | "
            f"{100 * ckpt['share_of_round_wall']:.2f}% | {ckpt['bytes'] / 1e6:.1f} |"
        )
    devices = json.loads((churn / "summary.json").read_text())["devices"]
    arrived = [d for d in devices if d["id"] >= len(devices) - 20]  # the last ids arrive
    target = 0.5
    print(
        f"\nchurn: {len(arrived)} arriving devices, final sparsity min "
        f"{min(d['prune_ratio'] for d in arrived):.3f} / mean "
        f"{statistics.fmean(d['prune_ratio'] for d in arrived):.3f} (target {target}); "
        f"all at target: {all(d['prune_ratio'] >= target - 1e-6 for d in arrived)}"
    )


if __name__ == "__main__":
    main()
