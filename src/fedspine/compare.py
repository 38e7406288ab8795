"""`fedspine compare`: run several methods on one identical config and compare them.

Each method runs into OUT/<method>/ (published when it finishes, like `fedspine run`), so an
interrupted compare keeps its finished runs; a rerun on the same OUT reuses every run dir that
holds a summary.json. comparison.{json,md,png} are rewritten after every method (a partial
table) and once more at the end with the inference-latency column measured.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fedspine.config import PLACEMENT_KEYS, Config, config_from_dict, config_to_dict, read_toml
from fedspine.errors import ConfigError
from fedspine.methods.registry import method_names
from fedspine.report.comparison import (
    DEFAULT_TARGET_SHARE,
    REFERENCE_METHOD,
    build_comparison,
    median_sparsity_device,
    write_comparison,
)
from fedspine.report.final_state import load_device_structures
from fedspine.report.progress import NullProgress, RunProgress
from fedspine.report.record import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
    read_rounds,
    read_summary,
)
from fedspine.run_dir import partial_path


def default_methods() -> tuple[str, ...]:
    """Every registered method, the reference (fedspine) first."""
    names = method_names()
    return (REFERENCE_METHOD,) + tuple(m for m in names if m != REFERENCE_METHOD)


@dataclasses.dataclass(frozen=True)
class LatencySetup:
    """How the inference-latency column is measured (cheap on purpose: it is a ratio)."""

    batch: int = 8
    seq_len: int = 128
    repeats: int = 10
    warmup: int = 3
    threads: int = 1  # one thread: the ratio stays stable on a busy machine


FULL_TEST_DEVICES = 16  # final models re-scored on the whole test set per method (compare)
# Generated answers cost a greedy decode each (about 0.5 s for SmolLM2 on one CPU core), so a
# generate compare re-scores two devices only, the first and last ids (tiers are laid out in id
# blocks, so two tiers); the runs' own final_score covers every device on
# eval.final_eval_examples answers.
FULL_TEST_DEVICES_GENERATE = 2


def full_test_device_count(config: Config, requested: int | None = None) -> int:
    """Device models re-scored on the whole test set per method: `requested`, else by task."""
    if requested is not None:
        return requested
    return FULL_TEST_DEVICES_GENERATE if config.data.task == "generate" else FULL_TEST_DEVICES


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """`"a,b"` (or a list) -> validated method names in the given order; None -> all methods."""
    if text is None:
        return list(default_methods())
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in method_names()]
    if unknown or not names:
        raise ConfigError(
            f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"--methods takes a comma-separated list of: {', '.join(default_methods())}"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep order


def method_config(config: Config, method: str) -> Config:
    """The shared config with only run.method changed."""
    return dataclasses.replace(config, run=dataclasses.replace(config.run, method=method))


def _flat(values: dict) -> dict[str, object]:
    return {f"{s}.{k}": v for s, section in values.items() for k, v in section.items()}


def is_interrupted_run(run_dir: Path) -> bool:
    """A method run that stopped after a checkpoint: `<run_dir>.partial/checkpoint.pt`."""
    return (partial_path(run_dir) / CHECKPOINT_FILE).is_file()


def is_finished_run(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).is_file()


def check_reusable(run_dir: Path, config: Config) -> None:
    """A reused run must have been made with exactly this config, or the table would mislead
    (where it ran, `PLACEMENT_KEYS`, may differ: a local rerun reuses a cluster's runs)."""
    saved = _flat(config_to_dict(config_from_dict(read_toml(run_dir / CONFIG_FILE))))
    wanted = _flat(config_to_dict(config))
    differing = sorted(k for k in wanted if saved.get(k) != wanted[k] and k not in PLACEMENT_KEYS)
    if differing:
        raise ConfigError(
            f"{run_dir} was run with a different config ({', '.join(differing)}); "
            "pass another --out, or remove that run directory to rerun it"
        )


def load_run(run_dir: Path) -> tuple[Path, dict, list[dict]]:
    return run_dir, read_summary(run_dir), read_rounds(run_dir)


def representative_structure(run_dir: Path, summary: dict):
    """(device id, its sparsity, its KeptIndices): the run's median-sparsity device."""
    from fedspine.pruning import KeptIndices

    device = median_sparsity_device(summary["devices"])
    structures = load_device_structures(run_dir)
    kept = next(s["kept"] for s in structures if s["id"] == device["id"])
    return device["id"], device["prune_ratio"], KeptIndices.from_dict(kept)


def measure_latency_ratios(
    config: Config, runs: dict[str, tuple[Path, dict, list[dict]]], setup: LatencySetup
) -> dict[str, dict]:
    """Per method, its representative final model's CPU latency over the unpruned base.

    All pruned bases and the unpruned one are timed round-robin in this one process (the
    bench-inference measurement), so machine drift hits all alike. LoRA is merged at
    deployment, so the bare pruned base is what a device runs. A full structure is 1.0 exactly.
    """
    from fedspine.bench_inference import median_latencies_ms
    from fedspine.models.loading import load_classifier
    from fedspine.pruning import build_pruned_model

    first_summary = next(iter(runs.values()))[1]
    base = load_classifier(config.model.source, int(first_summary["num_labels"]), config.run.seed)
    chosen = {m: representative_structure(d, s) for m, (d, s, _) in runs.items()}
    timed = [m for m, (_, _, kept) in chosen.items() if not kept.is_full]
    models = [base.model] + [build_pruned_model(base.model, chosen[m][2]).eval() for m in timed]
    seq_len = min(setup.seq_len, getattr(base.model.config, "max_position_embeddings", 10**9))
    ids = torch.randint(
        5,
        base.model.config.vocab_size,
        (setup.batch, seq_len),
        generator=torch.Generator().manual_seed(0),
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    try:
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        latencies = median_latencies_ms(models, inputs, setup.repeats, setup.warmup)
    finally:
        torch.set_num_threads(previous_threads)
    by_method = dict(zip(timed, latencies[1:], strict=True))
    result = {}
    for method, (device_id, sparsity, _) in chosen.items():
        pruned_ms = by_method.get(method, latencies[0])
        result[method] = {
            "ratio": pruned_ms / latencies[0] if method in by_method else 1.0,
            "device": device_id,
            "device_sparsity": sparsity,
            "pruned_ms": pruned_ms,
            "unpruned_ms": latencies[0],
            "measured": method in by_method,
        }
    return result


def measure_full_test_accuracy(
    config: Config, runs: dict[str, tuple[Path, dict, list[dict]]], devices: int
) -> dict[str, dict]:
    """Per method, the mean accuracy of `devices` of its final device models (evenly spaced
    ids) on the whole held-out test set.

    A run's own final_accuracy scores all devices on eval.final_eval_examples (64) shared
    examples: cheap, but one example there is 1.6 points and the error is the same for every
    device, so it does not average out; at 93% that is about 3 points of sampling error, as
    large as the gaps the comparison is about. Fewer devices on the whole test set (400 by
    default) is a far tighter estimate of the same quantity for about the same cost.
    """
    from fedspine.evaluation import device_accuracies, every_kth_device
    from fedspine.pruning import KeptIndices
    from fedspine.report.final_state import load_global_lora, load_own_b
    from fedspine.resources import build_resources

    res = build_resources(config)  # data and base are the same for every method
    result = {}
    for method, (run_dir, _, _) in runs.items():
        global_lora, structures = load_global_lora(run_dir)
        by_id = {s["id"]: s for s in structures}
        picked = every_kth_device(list(by_id), devices)
        kept = [KeptIndices.from_dict(by_id[i]["kept"]) for i in picked]
        saved_b = load_own_b(run_dir)  # FedSA-LoRA: each device's own model
        own_b = [saved_b.get(i) for i in picked] if saved_b is not None else None
        accuracies = device_accuracies(res, global_lora, kept, res.test, own_b)
        result[method] = {
            "accuracy": statistics.fmean(accuracies),
            "devices": len(picked),
            "examples": len(res.test),
        }
    return result


def _run_one(
    config: Config,
    run_dir: Path,
    make_progress: Callable[[str], RunProgress],
) -> Path:
    from fedspine.flower.simulation import simulate  # imports Ray: only when a run starts

    progress = make_progress(config.run.method)
    resume = is_interrupted_run(run_dir)  # an interrupted compare continues where it stopped
    try:
        return simulate(config, run_dir, progress, resume=resume)
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()


def run_compare(
    config: Config,
    methods: Sequence[str] | None,
    out: Path,
    target_share: float = DEFAULT_TARGET_SHARE,
    make_progress: Callable[[str], RunProgress] | None = None,
    say: Callable[[str], None] | None = None,
    latency: LatencySetup | None = None,
    full_test_devices: int | None = None,
) -> dict:
    """Run (or reuse) every method into OUT/<method>/ and write comparison.* into OUT.

    Once every method has run, each method's final models are timed (inference latency) and
    re-scored on the whole test set; the shared bar then comes from those re-scored finals.
    """
    names = parse_methods(methods)
    if not 0.0 < target_share <= 1.0:
        raise ConfigError(f"--target-share must be in (0, 1], got {target_share}")
    out = Path(out)
    make_progress = make_progress or (lambda _method: NullProgress())
    say = say or (lambda _text: None)
    latency = latency or LatencySetup()
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple[Path, dict, list[dict]]] = {}
    budget = config.run.time_budget_s
    for index, method in enumerate(names, start=1):
        method_cfg, run_dir = method_config(config, method), out / method
        if is_finished_run(run_dir):
            check_reusable(run_dir, method_cfg)
            say(f"[{index}/{len(names)}] {method}: reusing the finished run in {run_dir}")
        else:
            say(f"[{index}/{len(names)}] {method}")
            _run_one(method_cfg, run_dir, make_progress)
        runs[method] = load_run(run_dir)
        partial = build_comparison(runs, target_share, pending=names[index:], time_budget_s=budget)
        write_comparison(out, partial, {m: r[2] for m, r in runs.items()})
    say("measuring inference latency of each method's median-sparsity device")
    latencies = measure_latency_ratios(config, runs, latency)
    full_test_devices = full_test_device_count(config, full_test_devices)
    say(f"scoring {full_test_devices} final device models per method on the whole test set")
    full_test = measure_full_test_accuracy(config, runs, full_test_devices)
    comparison = build_comparison(
        runs, target_share, latencies, time_budget_s=budget, full_test=full_test
    )
    comparison["latency_setup"] = dataclasses.asdict(latency)
    write_comparison(out, comparison, {m: r[2] for m, r in runs.items()})
    return comparison


def parse_seeds(text: str | Sequence[int] | None) -> list[int]:
    """`"0,1,2"` (or a list) -> distinct non-negative seeds in the given order."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else [str(s) for s in text]
    try:
        seeds = [int(p) for p in (p.strip() for p in parts) if p]
    except ValueError:
        raise ConfigError(
            f"--seeds {text!r} must be comma-separated integers, e.g. --seeds 0,1,2"
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {text!r} needs at least one seed, each >= 0")
    return list(dict.fromkeys(seeds))


def run_seeded_compare(
    config: Config,
    methods: Sequence[str] | None,
    out: Path,
    seeds: Sequence[int],
    say: Callable[[str], None] | None = None,
    **options: Any,
) -> dict:
    """One whole comparison per seed into OUT/seed-<s>/, then their summary into OUT.

    Seeds run one after another; a rerun on the same OUT reuses every finished method of
    every seed, so an interrupted multi-seed compare resumes where it stopped. `options` are
    run_compare's keyword options (target_share, make_progress, latency, full_test_devices).
    """
    from fedspine.report.seeds import aggregate_seeds, seed_dir_name, write_seeds

    names = parse_methods(methods)
    seeds = parse_seeds(list(seeds))
    say = say or (lambda _text: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict] = {}
    for index, seed in enumerate(seeds, start=1):
        say(f"seed {seed} ({index}/{len(seeds)})")
        seeded = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=seed))
        per_seed[seed] = run_compare(seeded, names, out / seed_dir_name(seed), say=say, **options)
    rounds = {
        m: [
            read_rounds(Path(e["run_dir"]))
            for c in per_seed.values()
            for e in c["methods"]
            if e["method"] == m
        ]
        for m in names
    }
    aggregate = aggregate_seeds(per_seed, config.run.time_budget_s)
    write_seeds(out, aggregate, rounds)
    return aggregate
