"""The methods fedspine can run: one row each, owning everything that makes the method itself.

A row names the method's planner (server policy), its aggregation rule, the rank of its global
LoRA, its device recipe and whether its devices are probed at registration. The baselines'
papers, what we build of them and every deviation: `fedspine.methods.baselines`. Config
validation, the CLI help and `fedspine compare`'s default list all read this registry, so a
new method is one module plus one `register_method` call (see tests/test_method_registry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedspine.lora.aggregators import AGGREGATORS
from fedspine.methods.base import Planner
from fedspine.methods.baselines import (
    fedsa_planner,
    flexlora_rank,
    full_rank,
    max_tier_rank,
    tier_planner,
)
from fedspine.methods.fedspine import BanditPlanner
from fedspine.methods.planners import (
    FixedPlanner,
    RandomPlanner,
    ScheduledPlanner,
)
from fedspine.protocol import DeviceRecipe

if TYPE_CHECKING:
    from fedspine.config import Config


def _never(config: Config) -> bool:
    return False


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str  # one line, shown by `--help` and in docs
    aggregation: str  # a key of fedspine.lora.aggregators.AGGREGATORS
    recipe: DeviceRecipe  # what its devices do besides LoRA training
    make_planner: Callable[[Config, int], Planner]  # (config, number of devices)
    # rank of its global LoRA (>= any device's rank); 0 = the modules' full rank (exact)
    global_rank: Callable[[Config], int]
    probes: Callable[[Config], bool] = _never  # devices time a step at registration

    @property
    def prunes(self) -> bool:
        """Devices end pruned: a final round brings laggards to the target."""
        return self.recipe.prunes


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method (a name may be registered once); returns it, so it can decorate a row."""
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.aggregation not in AGGREGATORS:
        raise ValueError(
            f"method {spec.name!r}: aggregation {spec.aggregation!r} is not one of "
            f"{', '.join(AGGREGATORS)}"
        )
    _METHODS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _METHODS.pop(name, None)


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; methods are: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (fedspine first)."""
    return tuple(_METHODS)


# -- the built-in methods' pieces -----------------------------------------------------------------


def participation_rate(config: Config) -> float:
    """Expected share of devices picked per round (what the server's sampler does)."""
    return min(1.0, config.run.clients_per_round / config.fleet.num_devices)


def _lora_rank(config: Config) -> int:
    return config.model.lora_rank


def _bandit_rank(config: Config) -> int:
    return config.bandit.rank_max


def _bandit_probes(config: Config) -> bool:
    return config.bandit.probe


def _bandit(mode: str | None) -> Callable[[Config, int], Planner]:
    def make(config: Config, num_devices: int) -> Planner:
        return BanditPlanner(config, mode or config.bandit.mode, num_devices)

    return make


def _random(config: Config, num_devices: int) -> Planner:
    return RandomPlanner(
        config.bandit.rank_min,
        config.bandit.rank_max,
        config.run.seed,
        config.run.rounds,
        participation_rate(config),
        config.pruning.warmup_share,
    )


for _spec in (
    MethodSpec(
        "fedspine",
        "iterative on-device prune-and-tune; S-UCB picks each device's (sparsity, rank)",
        "masked-svd-residual",
        DeviceRecipe.PRUNE_AND_TUNE,
        _bandit(None),
        _bandit_rank,
        _bandit_probes,
    ),
    MethodSpec(
        "fedlora",
        "FedIT: one rank for all, no pruning, A and B averaged",
        "fedavg",
        DeviceRecipe.NONE,
        lambda config, n: FixedPlanner(config.model.lora_rank),
        _lora_rank,
    ),
    MethodSpec(
        "hetlora",
        "HetLoRA: ranks by device tier, zero-padded sparsity-weighted averaging (weights: "
        "||B_k A_k||_F), truncation down, rank self-pruning, no model pruning "
        "(the paper's unpruned reference)",
        "sparsity-weighted",
        DeviceRecipe.RANK_SELF_PRUNE,
        tier_planner(sticky=True),
        max_tier_rank,
    ),
    MethodSpec(
        "hetlora-examples",
        "HetLoRA with example-count weights instead of the paper's norm weights (this "
        "project's earlier simplified hetlora, kept for comparison)",
        "zero-pad",
        DeviceRecipe.RANK_SELF_PRUNE,
        tier_planner(sticky=True),
        max_tier_rank,
    ),
    MethodSpec(
        "flexlora",
        "FlexLoRA: ranks by device tier, example-weighted average of the full deltas held "
        "exactly, SVD redistribution to each device's rank, no pruning",
        "masked-svd",
        DeviceRecipe.NONE,
        tier_planner(sticky=False),
        flexlora_rank,
    ),
    MethodSpec(
        "prune-then-tune",
        "one-shot Taylor pruning to the target before training, then FedLoRA",
        "masked-svd",
        DeviceRecipe.ONE_SHOT_PRUNE,
        lambda config, n: FixedPlanner(config.model.lora_rank, prunes=True),
        _lora_rank,
    ),
    MethodSpec(
        "fedspine-fixed",
        "FedSpine's prune-and-tune with one fixed schedule and rank (no bandit)",
        "masked-svd-residual",
        DeviceRecipe.PRUNE_AND_TUNE,
        lambda config, n: ScheduledPlanner(config.model.lora_rank, config.run.rounds),
        _lora_rank,
    ),
    MethodSpec(
        "fedspine-random",
        "FedSpine with random arms (no bandit)",
        "masked-svd-residual",
        DeviceRecipe.PRUNE_AND_TUNE,
        _random,
        _bandit_rank,
    ),
    MethodSpec(
        "flora",
        "FLoRA: ranks by device tier, stacked uploads (exact sum of deltas) merged into the "
        "base each round, fresh local LoRA each round, no pruning",
        "stacking",
        DeviceRecipe.NONE,
        tier_planner(sticky=False),
        full_rank,
    ),
    MethodSpec(
        "fedsa-lora",
        "FedSA-LoRA: one rank, only A shared and averaged, each device keeps its own B; "
        "each device's own model is scored, no pruning",
        "shared-a",
        DeviceRecipe.LOCAL_B,
        fedsa_planner,
        _lora_rank,
    ),
    MethodSpec(
        "fedspine-perdevice",
        "FedSpine with one S-UCB tree per device and no sharing (the paper's mode)",
        "masked-svd-residual",
        DeviceRecipe.PRUNE_AND_TUNE,
        _bandit("per-device"),
        _bandit_rank,
        _bandit_probes,
    ),
):
    register_method(_spec)
