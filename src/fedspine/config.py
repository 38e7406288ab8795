"""Typed run configuration: presets, TOML files and `--set` overrides, validated once at the edge.

Every section is a frozen dataclass whose field comments are the one place a setting is
documented. `load_config` merges, in order: the preset, a TOML file, `key=value` overrides;
then `validate` checks ranges so that the rest of the code can trust the values.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w
import tomllib

from fedspine.bandit.reward import RewardWeights
from fedspine.errors import ConfigError
from fedspine.fleet.faults import parse_tier_factors
from fedspine.fleet.profiles import parse_tiers
from fedspine.methods.registry import method_names
from fedspine.pruning.importance import IMPORTANCE
from fedspine.pruning.selection import SELECTION_MODES

TARGET_MODES = ("uniform", "budget")
CLOCKS = ("simulated", "measured")
TASKS = ("classify", "generate")
PRECISIONS = ("auto", "fp32", "bf16")  # auto is resolved once, in load_config
COMPUTE_DEVICES = ("cpu", "cuda", "auto")  # train.device
# settings that say where a run executes, not what it computes: a finished run made with other
# values is still the same run (compare reuses it)
PLACEMENT_KEYS = ("run.ray_address", "run.client_cpus", "run.client_gpus")
_REWARD = RewardWeights()  # the reward's defaults have one home: bandit/reward.py


@dataclass(frozen=True)
class RunSection:
    method: str = "fedspine"  # a registered method (fedspine.methods.registry; --help lists them)
    seed: int = 0  # seeds data split, partition, fleet, sampling, LoRA init and the bandit
    rounds: int = 12  # federated rounds (the pruning schedule's horizon)
    time_budget_s: float = 0.0  # >0: keep training past `rounds` until the simulated clock hits it
    max_rounds: int = 0  # cap on rounds under a time budget (0 = 3 x rounds)
    clients_per_round: int = 8  # devices sampled each round (capped at num_devices)
    workers: int = 2  # parallel simulated clients on the local Ray (one CPU thread each)
    # "" = start a local Ray for the run (`workers` CPUs); "auto" or "host:port" = connect to
    # a running Ray cluster (`ray start --head`), whose CPUs and GPUs then set how many clients
    # run at once (docs/cluster.md)
    ray_address: str = ""
    client_cpus: float = 1.0  # Ray CPUs reserved per simulated client (and its torch threads)
    client_gpus: float = 0.0  # Ray GPUs per simulated client: 0.25 packs 4 clients on a GPU
    sampling_seed_offset: int = 17  # participants are drawn from a stream seeded run.seed + this
    # comma-separated importable modules that register methods (each calls register_method);
    # imported wherever the config is validated, so simulation workers know them too
    method_modules: str = ""
    # simulated seconds a round waits for replies (0 = no deadline); later replies are "late",
    # not aggregated, and the round ends at the deadline. Under `flwr run`: a wall-clock timeout
    round_deadline_s: float = 0.0
    # fewest in-time, valid replies a round needs to be aggregated; below it the round is
    # skipped (global state unchanged, the clock and the bandit still advance)
    min_replies: int = 1

    @property
    def round_limit(self) -> int:
        """Most rounds a run may train: `rounds`, or under a time budget `max_rounds`."""
        if self.time_budget_s <= 0:
            return self.rounds
        return self.max_rounds or 3 * self.rounds


@dataclass(frozen=True)
class DataSection:
    # classify: texts with labels (a sequence classifier); generate: instruction tuning of a
    # causal LM (records instruction/context/response/category, scored on generated answers)
    task: str = "classify"
    dataset: str = "spam"  # bundled (spam, sotu, instructions), a CSV/JSONL/Parquet file, HF dir
    text_column: str = "text"
    label_column: str = "label"
    instruction_column: str = "instruction"  # generate: the request
    context_column: str = "context"  # generate: optional passage the request refers to
    response_column: str = "response"  # generate: the reference answer (the training target)
    category_column: str = "category"  # generate: optional; Dirichlet skew and per-category scores
    test_fraction: float = 0.2  # held-out share, stratified
    max_test_examples: int = 400  # cap on the held-out set used for the final accuracy
    round_eval_examples: int = 128  # fixed seeded subset scored every round (kept cheap)
    dirichlet_alpha: float = 0.5  # label skew across devices; lower is more non-IID
    iid: bool = False  # ignore alpha and split uniformly at random
    max_seq_len: int = 48  # tokens per example (longer texts are truncated)
    max_train_examples: int = 0  # 0 = use all training examples
    # A fleet larger than the data allows (devices x train.batch_size > examples): split the
    # data into as many partitions as it allows and give device d partition d mod that count
    # (devices share data; for scale tests). false: such a fleet is an error.
    reuse_partitions: bool = False
    # true: every device reads its own data (its SuperNode's node config `data-path`) and no
    # device receives another's; `dataset` is then the server's own held-out evaluation set
    device_local: bool = False
    # comma-separated label names every device maps its labels to (device_local, classify);
    # "" = the label names of the server's evaluation set, resolved before the first message
    labels: str = ""


@dataclass(frozen=True)
class ModelSection:
    source: str = "minilm"  # "minilm", "gemma3-270m", a local HF model dir, or a hub id
    lora_rank: int = 8  # rank for single-rank methods and the maximum rank of the global LoRA
    lora_alpha_per_rank: float = (
        2.0  # lora_alpha = this * rank, so scaling is the same at every rank
    )
    lora_dropout: float = 0.0
    tier_ranks: str = "4,8,16"  # hetlora/flexlora: rank per announced tier, weakest first
    rank_tail_share: float = 0.05  # hetlora's gamma: the tail share of rank a device may shed


@dataclass(frozen=True)
class TrainSection:
    local_steps: int = 12  # optimizer steps per device per round
    batch_size: int = 8
    learning_rate: float = 1e-3  # LoRA factors
    head_learning_rate: float = 2e-3  # the new classification head
    lr_decay: float = 1.0  # both rates x this per round after the first (1 = constant)
    # fp32 | bf16 | auto: bf16 autocast of the forward passes of local training and scoring
    # (backward follows); weights and LoRA factors stay fp32. auto = bf16 where the CPU has
    # native bf16 (AVX512-BF16 or AMX), else fp32; config.toml records what it resolved to.
    precision: str = "fp32"
    # the torch device of the local loop and of evaluation: cpu | cuda | auto (cuda where the
    # process sees a GPU). Ray shows a client a GPU only when run.client_gpus > 0
    device: str = "cpu"
    logit_adjustment: float = 0.0  # tau: local loss on logits + tau*log(local label prior); 0 = off
    weight_decay: float = 0.0
    # eta_g: the global moves this share of the way to the round's aggregate (FedAvg with a
    # server learning rate, Reddi et al. 2021); below 1 it damps the swing a few label-skewed
    # participants give the global model. 1 = the aggregate replaces the global.
    server_learning_rate: float = 1.0


@dataclass(frozen=True)
class FleetSection:
    num_devices: int = 80
    tiers: str = "tx2:1.3:8:30,xavier-nx:6.0:8:40,agx-xavier:11.0:32:10"  # name:TFLOPs:GB:count
    efficiency: float = 0.25  # share of peak FP16 reached in training, same for every tier
    device_jitter: float = 0.2  # each device within +-20% of its tier
    bandwidth_min_mbps: float = 1.0  # MB/s, log-uniform per device
    bandwidth_max_mbps: float = 20.0
    bandwidth_drift: float = 0.3  # +-30% round to round
    latency_s: float = 0.05  # fixed per message
    power_switch_prob: float = 0.05  # chance per round of switching power mode
    low_power_factor: float = 0.6  # throughput multiplier in low-power mode
    round_noise: float = 0.1  # +-10% per-round throughput noise
    memory_usable_fraction: float = 0.5  # share of a board's shared CPU/GPU memory training may use
    # seeded faults, per device and round (simulation only; 0 = off)
    dropout_prob: float = 0.0  # unavailable for the round: never answers
    crash_prob: float = 0.0  # dies part-way through the round without answering
    fault_tier_factors: str = ""  # per-tier multiplier of both, e.g. "tx2:2.0,xavier-nx:1.5"
    # a changing population (simulation only; 0 = off): each device is away (not connected,
    # not sampled) with this chance per round, and the last `arriving_devices` device ids join
    # only before `arrival_round` (0 = half-way: run.rounds // 2 + 1)
    away_share: float = 0.0
    arriving_devices: int = 0
    arrival_round: int = 0
    # simulated: round times, the probe and memory limits come from the profiles above;
    # measured: what really elapsed (server send-to-reply per device, the device's own compute
    # time and peak memory) and each node's declared or free memory (`flwr run` default)
    clock: str = "simulated"


@dataclass(frozen=True)
class PruningSection:
    target_sparsity: float = 0.5  # share of heads and FFN channels every device ends without
    # After the planned rounds, catch-up rounds bring every device short of its target there
    # (rarely sampled ones too). false: devices end where their rounds left them, as in the
    # paper, where only sampled devices prune; a catch-up costs one device round per laggard.
    catch_up: bool = True
    prune_interval: int = 20  # local steps between pruning steps (K)
    importance: str = "lora-taylor"  # lora-taylor | magnitude | taylor (calibration, full grads)
    ema_beta: float = 0.9  # smoothing of importance over local iterations
    selection: str = "uniform"  # uniform (same share per layer) | global (ranked across layers)
    final_recovery_steps: int = 6  # steps of the final round (scoring, prune at half, recovery)
    warmup_share: float = 0.5  # share of rounds over which a bandit arm's sparsity cap rises
    share_importance: bool = True  # devices pool their scores; each starts from the fleet prior
    fleet_momentum: float = 0.5  # share of the old fleet prior kept when a round's scores arrive
    # uniform: every device ends at target_sparsity (the paper's "same sparsity" comparison);
    # budget: each device sets its own target, the least sparsity at which its deployed model
    # meets latency_budget_ms (one request: batch 1, data.max_seq_len tokens) and
    # memory_budget_mb on its own hardware
    target: str = "uniform"
    latency_budget_ms: float = 0.0  # 0 = the weakest tier's nominal device at target_sparsity
    memory_budget_mb: float = 0.0  # ceiling on the deployed model's weights (0 = none)
    budget_max_sparsity: float = 0.8  # most a device may prune itself to meet its budget


@dataclass(frozen=True)
class BanditSection:
    mode: str = "shared"  # shared (devices grouped by observed speed) | per-device (paper)
    rank_min: int = 2
    rank_max: int = 8  # = FedLoRA's fixed rank: a device never ships more than FedLoRA does
    exploration: float = 0.5  # c in mean + c*sqrt(log t / n)
    smoothness: float = 0.3  # L in + L*diam(cell)
    w_loss: float = _REWARD.w_loss  # reward weight of the relative loss drop
    w_prune: float = _REWARD.w_prune  # reward weight of the share of the sparsity gap closed
    w_imp: float = _REWARD.w_imp  # reward weight of the LoRA update's norm (vs the round's max)
    w_time: float = _REWARD.w_time  # penalty weight of completion time / round median
    time_slack: float = _REWARD.time_slack  # charge only time/median above this (1: slower half)
    max_time_ratio: float = _REWARD.max_time_ratio  # time/median is capped here in the reward
    failure_penalty: float = _REWARD.failure_penalty  # extra penalty of a failed round
    speed_new_weight: float = 0.5  # a round's measured speed vs the device's running estimate
    probe: bool = True  # devices time one step + a transfer at registration (groups, time model)
    group_width_log2: float = 0.5  # shared mode: a speed group spans a factor 2**this
    time_model: bool = True  # predict each arm's time term from measured speeds (time_model.py)


@dataclass(frozen=True)
class EvalSection:
    target_accuracy: float = 0.0  # 0 = 95% of this run's best accuracy; else an absolute bar
    final_eval_examples: int = 64  # per-device final evaluation subset (global model: full test)
    round_devices: int = 2  # pruned methods: participants scored per round (least/most pruned)
    max_new_tokens: int = 24  # generate: greedy answer length cap when scoring


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    fleet: FleetSection = field(default_factory=FleetSection)
    pruning: PruningSection = field(default_factory=PruningSection)
    bandit: BanditSection = field(default_factory=BanditSection)
    eval: EvalSection = field(default_factory=EvalSection)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CI-sized: real MiniLM, real data, a few devices; under a minute on 2 cores.
    "smoke": {
        "run": {"rounds": 4, "clients_per_round": 4},
        "data": {
            "max_train_examples": 800,
            "max_test_examples": 200,
            "round_eval_examples": 100,
            "max_seq_len": 48,
        },
        "train": {"local_steps": 8},
        "fleet": {"num_devices": 8},
        "pruning": {"prune_interval": 4, "final_recovery_steps": 6},
        "eval": {"final_eval_examples": 100},
    },
    # The main job: the 80-device fleet, MiniLM, bundled spam data; under 3 minutes on 2 cores.
    # bf16 where the CPU has it: measured 0.62x the fp32 wall time at the same final accuracy
    # (bench/speed_before_after.py, docs/results/speed.md).
    "default": {"train": {"precision": "auto"}},
    # Closer to the paper's RoBERTa setting at our scale: 5-class State-of-the-Union eras,
    # Dirichlet non-IID, 50% target; sized so an 8-method `fedspine compare` fits 45 minutes
    # on 2 cores (measured at 12 rounds: 4.7 min for an unpruned method, 6-7 for a pruning one).
    "paper": {
        "run": {"rounds": 10},
        "data": {"dataset": "sotu", "max_seq_len": 64, "max_test_examples": 400},
        "train": {"local_steps": 10},
    },
    # Instruction tuning of the real SmolLM2-135M-Instruct on the bundled instruction set:
    # CI-sized (a few devices, a few short rounds), 30% target as in the paper's LLM setting.
    # Measured here (seed 0, bf16 via "auto"): final score 7.2% vs the untuned base's 4.3% on 60
    # held-out answers in 134 s (fp32: 7.6% vs 4.5% in 219 s), at 10.03% sparsity (SmolLM2's
    # heads go a kv group at a time, so FFN channels make up the rest of the target: all heads
    # kept, 20% of the channels removed).
    "llm-smoke": {
        "run": {"rounds": 3, "clients_per_round": 2},
        "data": {
            "task": "generate",
            "dataset": "instructions",
            "max_seq_len": 96,
            "max_train_examples": 400,
            "max_test_examples": 60,
            "round_eval_examples": 15,
        },
        "model": {"source": "smollm2-135m"},
        "train": {"local_steps": 10, "batch_size": 4, "learning_rate": 2e-3, "precision": "auto"},
        "fleet": {"num_devices": 4},
        "pruning": {"target_sparsity": 0.1, "prune_interval": 5, "final_recovery_steps": 4},
        "eval": {"final_eval_examples": 24, "max_new_tokens": 12, "round_devices": 1},
    },
    # The paper's LLM setting at our scale: 8 devices, 30% target sparsity, SmolLM2.
    "llm": {
        "run": {"rounds": 6, "clients_per_round": 4},
        "data": {
            "task": "generate",
            "dataset": "instructions",
            "max_seq_len": 128,
            "max_test_examples": 150,
            "round_eval_examples": 40,
        },
        "model": {"source": "smollm2-135m"},
        "train": {"local_steps": 10, "batch_size": 4, "learning_rate": 2e-3, "precision": "auto"},
        "fleet": {"num_devices": 8},
        "pruning": {"target_sparsity": 0.3, "prune_interval": 5, "final_recovery_steps": 8},
        "eval": {"final_eval_examples": 40, "max_new_tokens": 16},
    },
}


def _section_types(section_cls: type) -> dict[str, type]:
    return get_type_hints(section_cls)


def _coerce(value: Any, expected: type, key: str) -> Any:
    """Convert a TOML or string value to the field's type, or raise a ConfigError naming the key."""
    if isinstance(value, str) and expected is not str:
        text = value.strip()
        try:
            if expected is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(text)
            return expected(text)
        except ValueError:
            raise ConfigError(
                f"{key} = {value!r} is not a valid {expected.__name__}; "
                f"use e.g. --set {key}={_example(expected)}"
            ) from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key} = {value!r} must be a {expected.__name__}")
    return value


def _example(expected: type) -> str:
    return {int: "4", float: "0.5", bool: "true"}.get(expected, "value")


def _apply(config: Config, overrides: dict[str, dict[str, Any]], origin: str) -> Config:
    """Return a copy of `config` with nested `{section: {key: value}}` overrides applied."""
    sections = {f.name: getattr(config, f.name) for f in fields(config)}
    for section_name, values in overrides.items():
        if section_name not in sections:
            raise ConfigError(
                f"unknown config section [{section_name}] in {origin}; "
                f"sections are: {', '.join(sections)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section_name}] in {origin} must be a table of key = value")
        section = sections[section_name]
        types = _section_types(type(section))
        changes = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown key {section_name}.{key} in {origin}; "
                    f"keys of [{section_name}] are: {', '.join(types)}"
                )
            changes[key] = _coerce(value, types[key], f"{section_name}.{key}")
        sections[section_name] = dataclasses.replace(section, **changes)
    return Config(**sections)


def parse_set_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """Turn `["run.rounds=5", "data.iid=true"]` into nested overrides (values stay strings)."""
    nested: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(
                f"--set {pair!r} must look like section.key=value, e.g. --set run.rounds=10"
            )
        nested.setdefault(section, {})[name] = value
    return nested


def read_toml(path: Path) -> dict[str, Any]:
    """Read a config TOML file with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def load_config(
    preset: str = "default",
    config_file: Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Build the resolved config: defaults <- preset <- TOML file <- --set overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets are: {', '.join(PRESETS)}")
    config = _apply(Config(), PRESETS[preset], f"preset {preset!r}")
    if config_file is not None:
        config = _apply(config, read_toml(config_file), str(config_file))
    if overrides:
        config = _apply(config, parse_set_overrides(overrides), "--set")
    validate(config)
    if config.train.precision == "auto":  # resolved here, so every worker trains alike
        train = dataclasses.replace(config.train, precision=native_precision())
        config = dataclasses.replace(config, train=train)
    return config


def native_precision() -> str:
    """bf16 where this CPU computes it natively (oneDNN's check: AVX512-BF16 or AMX), else
    fp32: emulated bf16 is slower than fp32."""
    import torch

    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Range checks that need more than a type: one readable message per problem."""
    run, data, train, prune, bandit = (
        config.run,
        config.data,
        config.train,
        config.pruning,
        config.bandit,
    )
    import_method_modules(run.method_modules)
    methods = method_names()
    _check(run.method in methods, f"run.method {run.method!r} is not one of: {', '.join(methods)}")
    _check(run.rounds >= 1, "run.rounds must be >= 1")
    _check(
        math.isfinite(run.time_budget_s) and run.time_budget_s >= 0,
        "run.time_budget_s must be a simulated time in seconds >= 0 (0 = no budget)",
    )
    _check(
        run.max_rounds == 0 or run.max_rounds >= run.rounds,
        "run.max_rounds must be 0 (= 3 x run.rounds) or >= run.rounds",
    )
    _check(run.clients_per_round >= 1, "run.clients_per_round must be >= 1")
    _check(
        math.isfinite(run.round_deadline_s) and run.round_deadline_s >= 0,
        "run.round_deadline_s must be simulated seconds >= 0 (0 = no deadline)",
    )
    _check(
        1 <= run.min_replies <= run.clients_per_round,
        "run.min_replies must be between 1 and run.clients_per_round",
    )
    for name in ("dropout_prob", "crash_prob"):
        value = getattr(config.fleet, name)
        _check(math.isfinite(value) and 0.0 <= value <= 1.0, f"fleet.{name} must be in [0, 1]")
    _check(
        config.fleet.dropout_prob + config.fleet.crash_prob <= 1.0,
        "fleet.dropout_prob + fleet.crash_prob must be <= 1",
    )
    parse_tier_factors(config.fleet.fault_tier_factors)
    fleet = config.fleet
    _check(
        math.isfinite(fleet.away_share) and 0.0 <= fleet.away_share < 1.0,
        "fleet.away_share must be in [0, 1)",
    )
    _check(
        0 <= fleet.arriving_devices < fleet.num_devices,
        "fleet.arriving_devices must be >= 0 and below fleet.num_devices",
    )
    _check(fleet.arrival_round >= 0, "fleet.arrival_round must be >= 0 (0 = half-way)")
    _check(fleet.clock in CLOCKS, f"fleet.clock must be one of: {', '.join(CLOCKS)}")
    _check(
        not data.device_local or data.task == "classify" or not data.labels,
        "data.labels names classes; with data.task=generate leave it empty",
    )
    _check(1 <= run.workers <= 64, "run.workers must be between 1 and 64")
    _check_placement(run, train)
    _check(config.fleet.num_devices >= 1, "fleet.num_devices must be >= 1")
    _check(0.0 < data.test_fraction < 1.0, "data.test_fraction must be in (0, 1)")
    _check(data.task in TASKS, f"data.task must be one of: {', '.join(TASKS)}")
    if data.task == "generate":
        _check(
            config.model.source != "minilm",
            "data.task=generate needs a causal language model: set model.source=smollm2-135m "
            "(or a local Hugging Face causal-LM directory)",
        )
        _check(
            train.logit_adjustment == 0.0,
            "train.logit_adjustment applies to classification only; set it to 0 for generate",
        )
    _check(config.eval.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1")
    _check(data.dirichlet_alpha > 0, "data.dirichlet_alpha must be > 0 (or set data.iid=true)")
    _check(8 <= data.max_seq_len <= 8192, "data.max_seq_len must be between 8 and 8192")
    _check(data.round_eval_examples >= 1, "data.round_eval_examples must be >= 1")
    _check(config.model.lora_rank >= 1, "model.lora_rank must be >= 1")
    _check(train.local_steps >= 1, "train.local_steps must be >= 1")
    _check(train.batch_size >= 1, "train.batch_size must be >= 1")
    _check(0 < train.learning_rate < 1, "train.learning_rate must be in (0, 1)")
    _check(0 < train.lr_decay <= 1, "train.lr_decay must be in (0, 1] (1 = no decay)")
    _check(
        train.precision in PRECISIONS, f"train.precision must be one of: {', '.join(PRECISIONS)}"
    )
    _check(
        0 <= train.logit_adjustment <= 2,
        "train.logit_adjustment must be in [0, 2] (0 = off, 1 = balanced softmax)",
    )
    _check(
        0 < train.server_learning_rate <= 1,
        "train.server_learning_rate must be in (0, 1] (1 = the aggregate replaces the global)",
    )
    _check(0.0 <= prune.target_sparsity < 1.0, "pruning.target_sparsity must be in [0, 1)")
    _check(
        prune.target in TARGET_MODES,
        f"pruning.target must be one of: {', '.join(TARGET_MODES)}",
    )
    _check(
        math.isfinite(prune.latency_budget_ms) and prune.latency_budget_ms >= 0,
        "pruning.latency_budget_ms must be >= 0 (0 = calibrated on the weakest tier)",
    )
    _check(
        math.isfinite(prune.memory_budget_mb) and prune.memory_budget_mb >= 0,
        "pruning.memory_budget_mb must be >= 0 (0 = no ceiling)",
    )
    _check(0.0 < prune.budget_max_sparsity < 1.0, "pruning.budget_max_sparsity must be in (0, 1)")
    _check(prune.prune_interval >= 1, "pruning.prune_interval must be >= 1")
    _check(
        prune.importance in IMPORTANCE,
        f"pruning.importance must be one of: {', '.join(IMPORTANCE)}",
    )
    _check(
        prune.selection in SELECTION_MODES,
        f"pruning.selection must be one of: {', '.join(SELECTION_MODES)}",
    )
    _check(0.0 <= prune.ema_beta < 1.0, "pruning.ema_beta must be in [0, 1)")
    _check(0.0 <= prune.fleet_momentum < 1.0, "pruning.fleet_momentum must be in [0, 1)")
    _check(0.0 <= prune.warmup_share <= 1.0, "pruning.warmup_share must be in [0, 1]")
    _check(bandit.mode in ("shared", "per-device"), "bandit.mode must be shared or per-device")
    _check(bandit.time_slack >= 0.0, "bandit.time_slack must be >= 0")
    _check(bandit.group_width_log2 > 0.0, "bandit.group_width_log2 must be > 0")
    _check(bandit.max_time_ratio > 0.0, "bandit.max_time_ratio must be > 0")
    _check(bandit.failure_penalty >= 0.0, "bandit.failure_penalty must be >= 0")
    _check(0.0 < bandit.speed_new_weight <= 1.0, "bandit.speed_new_weight must be in (0, 1]")
    _check(0.0 <= config.model.rank_tail_share < 1.0, "model.rank_tail_share must be in [0, 1)")
    _check_tier_ranks(config.model.tier_ranks)
    _check(
        1 <= bandit.rank_min <= bandit.rank_max,
        "bandit.rank_min must be >= 1 and <= bandit.rank_max",
    )
    _check(config.eval.target_accuracy <= 1.0, "eval.target_accuracy is a share in [0, 1]")
    parse_tiers(config.fleet.tiers)


def _check_placement(run: RunSection, train: TrainSection) -> None:
    """Ray address, per-client resources and the torch device (see docs/cluster.md)."""
    _check_ray_address(run.ray_address)
    _check(
        math.isfinite(run.client_cpus) and run.client_cpus > 0,
        "run.client_cpus must be > 0 (Ray CPUs per simulated client, e.g. 1 or 0.5)",
    )
    gpus = run.client_gpus
    _check(
        math.isfinite(gpus) and gpus >= 0 and (gpus <= 1 or gpus == int(gpus)),
        "run.client_gpus must be 0, a share of one GPU (e.g. 0.25) or a whole number",
    )
    _check(
        train.device in COMPUTE_DEVICES,
        f"train.device must be one of: {', '.join(COMPUTE_DEVICES)}",
    )
    _check(
        gpus == 0 or train.device != "cpu",
        "run.client_gpus reserves GPUs that train.device=cpu never uses; set train.device=cuda "
        "(or auto), or run.client_gpus=0",
    )


def _check_ray_address(address: str) -> None:
    if address in ("", "auto"):
        return
    host, sep, port = address.rpartition(":")
    _check(
        bool(sep and host) and port.isdigit() and 0 < int(port) < 65536 and "/" not in host,
        f"run.ray_address {address!r} must be empty (a local Ray), auto, or host:port of a Ray "
        "cluster's head (the address `ray start --head` prints, e.g. 10.0.0.1:6379)",
    )


def import_method_modules(text: str) -> None:
    """Import the modules named in run.method_modules (their import registers the methods)."""
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"run.method_modules: cannot import {name!r} ({err}); install it or put its "
                "folder on PYTHONPATH"
            ) from None


def _check_tier_ranks(text: str) -> None:
    try:
        ranks = [int(part) for part in text.split(",")]
    except ValueError:
        ranks = []
    _check(
        bool(ranks) and all(r >= 1 for r in ranks),
        f"model.tier_ranks {text!r} must be comma-separated ranks >= 1, e.g. 4,8,16",
    )


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, dict[str, Any]]) -> Config:
    """Rebuild a Config from its dict form (as sent to clients or read from a run's config.toml)."""
    config = _apply(Config(), values, "saved config")
    validate(config)
    return config


def config_to_toml(config: Config) -> str:
    return tomli_w.dumps(config_to_dict(config))
