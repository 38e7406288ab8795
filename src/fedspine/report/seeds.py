"""Several seeds of one comparison: per-method means, spreads and paired differences.

One seed cannot separate methods whose per-round accuracy swings with the label mix of the
round's participants, so `fedspine compare --seeds` runs the whole comparison once per seed
(each seed with its own shared bar) and this module summarises the per-seed comparisons.
Everything here is a pure function of those comparison dicts, except the writers at the end.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from fedspine.report.comparison import REFERENCE_METHOD, budget_line
from fedspine.report.record import write_json_atomic, write_text_atomic
from fedspine.report.summary import SMOOTHING_WINDOW, accuracy_at_time

SEEDS_JSON = "comparison.json"
SEEDS_MD = "comparison.md"
SEEDS_PNG = "comparison.png"
SEED_DIR_PREFIX = "seed-"

SEEDS_DEFINITION = (
    "Each seed is a whole comparison (data split, partition, fleet, sampling, initialisation) "
    "with its own shared bar (see seed-N/comparison.md). mean/std: over the seeds that have the "
    "figure (std is the sample std, 0 with one seed); speedup: the geometric mean of the "
    "per-seed speedups, over the seeds where both fedspine and the method reached the bar "
    "(reached k/n); gain of fedspine: fedspine's final accuracy minus the method's, paired "
    "by seed (positive: fedspine is more accurate), on the run's own final "
    "(eval.final_eval_examples examples) and on the whole test set (see the per-seed tables "
    "for how that is measured)."
)


def seed_dir_name(seed: int) -> str:
    return f"{SEED_DIR_PREFIX}{seed}"


def mean_std(values: list[float | None]) -> dict[str, float | int | None]:
    """{"mean", "std", "n"} of the known values (None when there are none)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(known) if len(known) > 1 else 0.0
    return {"mean": statistics.fmean(known), "std": std, "n": len(known)}


def geometric_mean(values: list[float | None]) -> dict[str, float | int | None]:
    """{"geomean", "min", "max", "n"} of the known positive ratios (a speedup is a ratio, so
    2x and 0.5x average to 1x, not 1.25x)."""
    known = [float(v) for v in values if v is not None and v > 0]
    if not known:
        return {"geomean": None, "min": None, "max": None, "n": 0}
    geomean = math.exp(statistics.fmean(math.log(v) for v in known))
    return {"geomean": geomean, "min": min(known), "max": max(known), "n": len(known)}


def _by_method(comparison: dict) -> dict[str, dict]:
    return {entry["method"]: entry for entry in comparison["methods"]}


def method_over_seeds(method: str, per_seed: dict[int, dict]) -> dict[str, Any]:
    """One method's figures across the seeds' comparisons (a seed without the method is skipped)."""
    entries = {s: _by_method(c).get(method) for s, c in per_seed.items()}
    entries = {s: e for s, e in entries.items() if e is not None}
    references = {s: _by_method(per_seed[s]).get(REFERENCE_METHOD) for s in entries}

    def column(key: str) -> list:
        return [entries[s].get(key) for s in entries]

    def gains(key: str) -> list[float | None]:
        pairs = ((entries[s], references[s]) for s in entries)
        return [
            None if ref is None or ref.get(key) is None or e.get(key) is None else ref[key] - e[key]
            for e, ref in pairs
        ]

    return {
        "method": method,
        "seeds": sorted(entries),
        "final_accuracy": mean_std(column("final_accuracy")),
        "final_accuracy_full_test": mean_std(column("final_accuracy_full_test")),
        "global_accuracy": mean_std(column("global_accuracy")),
        "mean_sparsity": mean_std(column("mean_sparsity")),
        "time_to_target_s": mean_std(column("time_to_target_s")),
        "time_to_smoothed_target_s": mean_std(column("time_to_smoothed_target_s")),
        "speedup_of_fedspine": geometric_mean(column("speedup_of_fedspine")),
        "smoothed_speedup_of_fedspine": geometric_mean(column("smoothed_speedup_of_fedspine")),
        "final_gain_of_fedspine": mean_std(gains("final_accuracy")),
        "full_test_gain_of_fedspine": mean_std(gains("final_accuracy_full_test")),
        "comm_bytes": mean_std(column("comm_bytes")),
        "inference_latency_ratio": mean_std(column("inference_latency_ratio")),
        "rounds": mean_std(column("rounds")),
        "sim_time_s": mean_std(column("sim_time_s")),
        "per_seed": {
            str(s): {
                key: e.get(key)
                for key in (
                    "final_accuracy",
                    "final_accuracy_full_test",
                    "global_accuracy",
                    "time_to_target_s",
                    "speedup_of_fedspine",
                    "time_to_smoothed_target_s",
                    "smoothed_speedup_of_fedspine",
                    "run_dir",
                )
            }
            for s, e in entries.items()
        },
    }


def aggregate_seeds(per_seed: dict[int, dict], time_budget_s: float = 0.0) -> dict[str, Any]:
    """The top-level comparison.json of a multi-seed compare, from `{seed: comparison}`."""
    methods: list[str] = []
    for comparison in per_seed.values():
        methods += [e["method"] for e in comparison["methods"] if e["method"] not in methods]
    return {
        "seeds": sorted(per_seed),
        "complete": all(c.get("complete", True) for c in per_seed.values()),
        "time_budget_s": time_budget_s,
        "target_share": next(iter(per_seed.values()))["target_share"] if per_seed else None,
        "target_accuracy_by_seed": {str(s): c["target_accuracy"] for s, c in per_seed.items()},
        "definition": SEEDS_DEFINITION,
        "seed_dirs": {str(s): seed_dir_name(s) for s in per_seed},
        "methods": [method_over_seeds(m, per_seed) for m in methods],
    }


def _pct(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _points(stats: dict) -> str:
    if stats["mean"] is None:
        return "–"
    return f"{100 * stats['mean']:+.1f} ± {100 * stats['std']:.1f}"


def _seconds(stats: dict, seeds: int) -> str:
    if stats["mean"] is None:
        return "not reached"
    return f"{stats['mean']:.1f} ({stats['n']}/{seeds})"


def _speedup(stats: dict, seeds: int) -> str:
    if stats["geomean"] is None:
        return "–"
    return f"{stats['geomean']:.2f}x [{stats['min']:.2f}–{stats['max']:.2f}] ({stats['n']}/{seeds})"


def _plain(stats: dict, fmt: str) -> str:
    return "n/a" if stats["mean"] is None else format(stats["mean"], fmt)


SEEDS_MD_COLUMNS = (
    "method",
    "final acc (mean ± std)",
    "final gain of fedspine (points)",
    "final acc, whole test set",
    "gain of fedspine, whole test set",
    "global acc",
    "time to target s (reached)",
    "fedspine speedup, geomean [min–max] (seeds)",
    f"time to target, {SMOOTHING_WINDOW}-round mean",
    f"fedspine speedup ({SMOOTHING_WINDOW}-round mean)",
    "mean sparsity",
    "rounds",
    "comm (MiB)",
    "inference latency (x unpruned)",
)


def format_seeds_markdown(aggregate: dict) -> str:
    seeds = len(aggregate["seeds"])
    rows = []
    for m in aggregate["methods"]:
        n = len(m["seeds"])
        comm = m["comm_bytes"]["mean"]
        cells = (
            m["method"],
            _pct(m["final_accuracy"]),
            "–" if m["method"] == REFERENCE_METHOD else _points(m["final_gain_of_fedspine"]),
            _pct(m["final_accuracy_full_test"]),
            "–" if m["method"] == REFERENCE_METHOD else _points(m["full_test_gain_of_fedspine"]),
            _pct(m["global_accuracy"]),
            _seconds(m["time_to_target_s"], n),
            "–" if m["method"] == REFERENCE_METHOD else _speedup(m["speedup_of_fedspine"], n),
            _seconds(m["time_to_smoothed_target_s"], n),
            "–"
            if m["method"] == REFERENCE_METHOD
            else _speedup(m["smoothed_speedup_of_fedspine"], n),
            _pct(m["mean_sparsity"]),
            _plain(m["rounds"], ".1f"),
            "n/a" if comm is None else f"{comm / 2**20:.1f}",
            _plain(m["inference_latency_ratio"], ".3f"),
        )
        rows.append("| " + " | ".join(cells) + " |")
    bars = ", ".join(
        f"seed {s}: {'n/a' if t is None else f'{100 * t:.1f}%'}"
        for s, t in aggregate["target_accuracy_by_seed"].items()
    )
    lines = [
        f"# Method comparison over {seeds} seed{'s' if seeds != 1 else ''}",
        "",
        "| " + " | ".join(SEEDS_MD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in SEEDS_MD_COLUMNS) + "|",
        *rows,
        "",
        f"Seeds: {', '.join(map(str, aggregate['seeds']))}; per-seed tables: "
        + ", ".join(f"{d}/{SEEDS_MD}" for d in aggregate["seed_dirs"].values())
        + f". Shared bars ({aggregate['target_share']:g} x the seed's best final accuracy, on "
        + f"the whole test set once re-scored): {bars}.",
        "",
        budget_line(aggregate.get("time_budget_s", 0.0)),
        "",
        SEEDS_DEFINITION,
    ]
    if not aggregate["complete"]:
        lines += ["", "Partial: some seeds still have methods to run."]
    return "\n".join(lines) + "\n"


def mean_curve(rows_by_seed: list[list[dict]], times: list[float]) -> list[float | None]:
    """Mean over seeds of the accuracy reached by each time (a seed not yet scored is skipped)."""
    curve = []
    for t in times:
        values = [accuracy_at_time(rows, t) for rows in rows_by_seed]
        known = [v for v in values if v is not None]
        curve.append(statistics.fmean(known) if known else None)
    return curve


def plot_seeds(path: Path, rounds: dict[str, list[list[dict]]], points: int = 120) -> None:
    """Mean per-round accuracy over seeds against simulated time, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max((r[-1]["sim_time_s"] for runs in rounds.values() for r in runs if r), default=0.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    if end > 0:
        times = [end * (i + 1) / points for i in range(points)]
        for method, runs in rounds.items():
            curve = mean_curve(runs, times)
            xs = [t for t, v in zip(times, curve, strict=True) if v is not None]
            ys = [100 * v for v in curve if v is not None]
            width = 2.5 if method == REFERENCE_METHOD else 1.2
            ax.plot(xs, ys, label=method, linewidth=width, drawstyle="steps-post")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("per-round accuracy, mean over seeds (%)")
    ax.set_title(
        f"accuracy vs simulated time, mean of {max(map(len, rounds.values()), default=0)} seeds"
    )
    ax.legend(fontsize=7)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_seeds(out: Path, aggregate: dict, rounds: dict[str, list[list[dict]]]) -> None:
    """The multi-seed comparison.json, .md and .png into `out`, each replaced atomically."""
    write_json_atomic(out / SEEDS_JSON, aggregate)
    write_text_atomic(out / SEEDS_MD, format_seeds_markdown(aggregate))
    plot_seeds(out / SEEDS_PNG, rounds)
