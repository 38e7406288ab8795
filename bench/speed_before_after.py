"""The main job before and after a change, side by side: wall time, peak memory, overhead.

Runs `bench/run_default.py` (this tree's script) once per seed against the fedspine source of
a git ref (checked out into a temporary worktree) and once against this tree, alternating, so
machine drift hits both alike; prints each run and the after/before ratios of the means.

    python bench/speed_before_after.py --ref 062fc4d [--after-ref HEAD] [--seeds 0,1,2]
        [--after-set key=value ...]

Without --after-ref, "after" is this working tree's src (do not edit it while this runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("wall_time_s", "peak_rss_mb_all_processes", "peak_pss_mb_all_processes", "final_accuracy")


def one_run(src: Path, seed: int, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    sets = [a for s in [f"run.seed={seed}", *extra] for a in ("--set", s)]
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_default.py"), *sets],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout[out.stdout.index("{") :])


def checkout(ref: str, where: Path) -> Path:
    """A detached worktree of `ref` (removed again at the end)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", where, ref], check=True
    )
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git ref of the 'before' code")
    parser.add_argument("--after-ref", help="git ref of the 'after' code (default: this tree)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--after-set", action="append", default=[], help="--set for 'after'")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": checkout(args.ref, Path(tmp) / "before")}
        trees["after"] = checkout(args.after_ref, Path(tmp) / "after") if args.after_ref else ROOT
        try:
            for seed in seeds:
                for name in ("before", "after"):
                    extra = args.after_set if name == "after" else []
                    run = one_run(trees[name] / "src", seed, extra) | {"seed": seed}
                    runs[name].append(run)
                    shown = {k: run[k] for k in KEYS} | run.get("where_the_time_goes_s", {})
                    print(name, seed, json.dumps(shown), flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tree])
    for key in KEYS:
        before = statistics.fmean(r[key] for r in runs["before"])
        after = statistics.fmean(r[key] for r in runs["after"])
        print(f"{key}: before {before:.4g}, after {after:.4g}, after/before {after / before:.3f}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
