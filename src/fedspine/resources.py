"""What one process needs for a run, built once per process from the resolved config.

Server and every simulated client call `load_resources(config_json)`; the cache means a worker
process loads the base model and tokenises the data once, not once per client call. All of it
is derived deterministically from the config (seeded), so every process agrees on the split,
the partition and the fleet without sending them around. The base model and the batches live
on this process's `train.device` (`compute_device`), moved there once here.

Nothing here is shared between processes but the config: on a Ray cluster each machine loads
the model source and the data path itself, so both must resolve on every machine
(docs/cluster.md); a packaged model's converted cache is built per machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import numpy as np

from fedspine.compute_device import compute_device
from fedspine.config import Config, FleetSection, config_from_dict
from fedspine.data.device_local import agreed_labels
from fedspine.data.instructions import load_instructions
from fedspine.data.loading import TextDataset, load_dataset, train_test_split
from fedspine.data.partition import device_partitions
from fedspine.errors import DataError
from fedspine.fleet.inference_budget import CostPoint, calibrated_budget_ms, cost_curve
from fedspine.fleet.profiles import (
    FLOPS_PER_TFLOP,
    DeviceProfile,
    FleetSpec,
    TierSpec,
    make_fleet,
    parse_tiers,
)
from fedspine.generative_eval import category_metrics
from fedspine.memory import release_freed_memory
from fedspine.models.loading import LoadedModel, load_causal_lm, load_classifier
from fedspine.train import TokenisedData, tokenise, tokenise_instructions


@dataclass
class RunResources:
    config: Config
    base: LoadedModel
    label_names: list[str]
    train: TokenisedData
    test: TokenisedData  # the held-out set for final accuracy
    round_eval: TokenisedData  # fixed seeded subset of `test`, scored every round
    partitions: list[list[int]]  # device id -> indices into `train`
    fleet_spec: FleetSpec
    fleet: list[DeviceProfile]
    answer_metrics: dict[int, str] | None = None  # generate: "exact" | "rouge-l" per category
    # pruning.target = "budget": the model's cost per sparsity and the resolved budget (ms, MB)
    cost_curve: tuple[CostPoint, ...] | None = None
    budget: tuple[float, float] | None = None

    @property
    def generative(self) -> bool:
        return self.config.data.task == "generate"


def fleet_spec_from(section: FleetSection, seed: int) -> FleetSpec:
    """Translate the config's fleet section (tier counts) into the simulator's spec (shares)."""
    tiers = parse_tiers(section.tiers)
    total = sum(count for *_, count in tiers)
    return FleetSpec(
        num_devices=section.num_devices,
        tiers=tuple(
            TierSpec(name, tflops, mem, count / total) for name, tflops, mem, count in tiers
        ),
        efficiency=section.efficiency,
        device_jitter=section.device_jitter,
        bandwidth_mbps_range=(section.bandwidth_min_mbps, section.bandwidth_max_mbps),
        bandwidth_drift=section.bandwidth_drift,
        latency_s=section.latency_s,
        power_switch_prob=section.power_switch_prob,
        low_power_factor=section.low_power_factor,
        round_noise=section.round_noise,
        memory_usable_fraction=section.memory_usable_fraction,
        seed=seed,
    )


def _subsample(ds: TextDataset, limit: int, seed: int) -> TextDataset:
    if limit <= 0 or len(ds.labels) <= limit:
        return ds
    keep = np.sort(np.random.default_rng(seed).choice(len(ds.labels), limit, replace=False))
    return ds.subset(keep.tolist())


def _read_source(config: Config) -> TextDataset:
    data = config.data
    if data.task == "generate":
        full = load_instructions(
            data.dataset,
            data.instruction_column,
            data.context_column,
            data.response_column,
            data.category_column,
        )
    else:
        full = load_dataset(data.dataset, data.text_column, data.label_column)
    return full


def _on_agreed_labels(ds: TextDataset, names: list[str]) -> TextDataset:
    """`ds` with its labels re-indexed onto the run's agreed label names."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(ds.label_names) - set(index))
    if unknown:
        raise DataError(
            f"the server's evaluation set {ds.name!r} has labels {unknown} that are not in "
            f"data.labels ({', '.join(names)})"
        )
    labels = [index[ds.label_names[label]] for label in ds.labels]
    return TextDataset(ds.texts, labels, list(names), ds.name, ds.targets)


def with_agreed_labels(config: Config) -> Config:
    """Device-local classification: fill data.labels from the server's evaluation set when it
    is empty, so the config every device receives names the classes its head must have."""
    data = config.data
    if not data.device_local or data.task != "classify" or data.labels:
        return config
    names = _read_source(config).label_names
    return dataclasses.replace(config, data=dataclasses.replace(data, labels=",".join(names)))


def load_data(config: Config) -> tuple[TextDataset, TextDataset]:
    """(training pool, held-out test set). With data.device_local the server holds no
    training data: its dataset is all evaluation set (capped at data.max_test_examples)."""
    data = config.data
    full = _read_source(config)
    if data.device_local:
        test = _subsample(full, data.max_test_examples, config.run.seed)
        if data.task == "classify":
            test = _on_agreed_labels(test, agreed_labels(data))
        return test.subset([]), test
    train, test = train_test_split(
        full, data.test_fraction, config.run.seed, max_test=data.max_test_examples
    )
    return _subsample(train, data.max_train_examples, config.run.seed), test


def build_resources(config: Config) -> RunResources:
    seed = config.run.seed
    device = compute_device(config.train.device)  # before the (slow) loads: fail fast
    train_text, test_text = load_data(config)
    generative = config.data.task == "generate"
    if generative:
        base = load_causal_lm(config.model.source, seed)
    else:
        base = load_classifier(config.model.source, len(train_text.label_names), seed)
    if device.type != "cpu":
        base.model.to(device)
    train, test = (_tokenise(part, base.tokenizer, config) for part in (train_text, test_text))
    train.device = test.device = str(device)
    n_eval = min(config.data.round_eval_examples, len(test))
    eval_idx = np.sort(np.random.default_rng(seed + 1).choice(len(test), n_eval, replace=False))
    alpha = None if config.data.iid else config.data.dirichlet_alpha
    partitions = (
        []  # each device brings its own data
        if config.data.device_local
        else device_partitions(
            train.labels,
            config.fleet.num_devices,
            alpha,
            seed,
            config.train.batch_size,
            config.data.reuse_partitions,
        )
    )
    spec = fleet_spec_from(config.fleet, seed)
    curve, budget = inference_budget(config, base.model.config, spec)
    scored = test if config.data.device_local else train  # the server's own examples
    return RunResources(
        config,
        base,
        list(test_text.label_names),
        train,
        test,
        test.subset(eval_idx.tolist()),
        partitions,
        spec,
        make_fleet(spec),
        category_metrics(scored.references, scored.labels) if generative else None,
        curve,
        budget,
    )


def build_device_resources(config: Config) -> RunResources:
    """A device of a device-local run: the base model, the fleet and the agreed label names;
    it holds no shared data (its own comes from its node config, `data.device_local`)."""
    seed = config.run.seed
    if config.data.task == "generate":
        base, names = load_causal_lm(config.model.source, seed), []
    else:
        names = agreed_labels(config.data)
        base = load_classifier(config.model.source, len(names), seed)
    none = TokenisedData([], [], int(base.tokenizer.pad_token_id))
    spec = fleet_spec_from(config.fleet, seed)
    curve, budget = inference_budget(config, base.model.config, spec)
    return RunResources(
        config, base, names, none, none, none, [], spec, make_fleet(spec), None, curve, budget
    )


def inference_budget(config: Config, model_config, spec: FleetSpec):
    """Budget mode: the cost curve and the (latency ms, memory MB) budget every device fits;
    a latency of 0 is calibrated on the weakest tier's nominal device at target_sparsity."""
    prune = config.pruning
    if prune.target != "budget":
        return None, None
    causal = config.data.task == "generate"
    curve = cost_curve(model_config, config.data.max_seq_len, prune.budget_max_sparsity, causal)
    latency = prune.latency_budget_ms
    if latency <= 0:
        weakest = min(t.peak_tflops for t in spec.tiers) * FLOPS_PER_TFLOP * spec.efficiency
        latency = calibrated_budget_ms(curve, weakest, prune.target_sparsity)
    return curve, (latency, prune.memory_budget_mb)


def _tokenise(part: TextDataset, tokenizer, config: Config) -> TokenisedData:
    max_len = config.data.max_seq_len
    if not part.texts:  # device-local runs: the server holds no training examples
        return TokenisedData([], [], int(tokenizer.pad_token_id))
    if config.data.task == "generate":
        return tokenise_instructions(part.texts, part.targets, part.labels, tokenizer, max_len)
    return tokenise(part.texts, part.labels, tokenizer, max_len)


@functools.lru_cache(maxsize=2)
def load_resources(config_json: str) -> RunResources:
    """Process-wide cache keyed by the exact resolved config."""
    res = build_resources(config_from_dict(json.loads(config_json)))
    release_freed_memory()  # loading and tokenising leave ~200 MB of freed heap behind
    return res


@functools.lru_cache(maxsize=2)
def load_device_resources(config_json: str) -> RunResources:
    """What a device needs: the shared resources, or with data.device_local only the model."""
    config = config_from_dict(json.loads(config_json))
    if config.data.device_local:
        return build_device_resources(config)
    return load_resources(config_json)
