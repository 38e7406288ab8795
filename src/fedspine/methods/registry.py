"""The methods fedspine can run, each described once, and the planner each one uses."""

from __future__ import annotations

from fedspine.config import Config, parse_tiers
from fedspine.methods.base import Method, Planner
from fedspine.methods.planners import (
    FixedPlanner,
    OneShotPlanner,
    RandomPlanner,
    ScheduledPlanner,
    TierRankPlanner,
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "fedspine",
            "masked-svd-residual",
            True,
            "iterative on-device prune-and-tune; S-UCB picks each device's (sparsity, rank)",
        ),
        Method("fedlora", "fedavg", False, "FedIT: one rank for all, no pruning, A and B averaged"),
        Method(
            "hetlora",
            "zero-pad",
            False,
            "ranks by device tier, zero-padded averaging, rank self-pruning, no model pruning "
            "(the paper's unpruned reference)",
        ),
        Method(
            "flexlora",
            "masked-svd",
            False,
            "ranks by device tier, full-delta averaging with SVD redistribution, no pruning",
        ),
        Method(
            "prune-then-tune",
            "masked-svd",
            True,
            "one-shot Taylor pruning to the target before training, then FedLoRA",
        ),
        Method(
            "fedspine-fixed",
            "masked-svd-residual",
            True,
            "FedSpine's prune-and-tune with one fixed schedule and rank (no bandit)",
        ),
        Method(
            "fedspine-random", "masked-svd-residual", True, "FedSpine with random arms (no bandit)"
        ),
        Method(
            "fedspine-perdevice",
            "masked-svd-residual",
            True,
            "FedSpine with one S-UCB tree per device and no sharing (the paper's mode)",
        ),
    )
}

# HetLoRA / FlexLoRA give a device the rank of the tier it announces, weakest tier first.
TIER_RANKS = (4, 8, 16)


def tier_ranks(config: Config) -> dict[str, int]:
    tiers = sorted(parse_tiers(config.fleet.tiers), key=lambda t: t[1])
    return {name: TIER_RANKS[min(i, len(TIER_RANKS) - 1)] for i, (name, *_) in enumerate(tiers)}


def global_rank(method: Method, config: Config) -> int:
    """Rank of the server's global LoRA: the largest rank any device of this method can use."""
    if method.name == "fedlora" or method.name in ("prune-then-tune", "fedspine-fixed"):
        return config.model.lora_rank
    if method.name in ("hetlora", "flexlora"):
        return max(TIER_RANKS)
    return config.bandit.rank_max


def participation_rate(config: Config) -> float:
    """Expected share of devices picked per round (what the server's sampler does)."""
    return min(1.0, config.run.clients_per_round / config.fleet.num_devices)


def get_method(name: str) -> Method:
    return METHODS[name]


def make_planner(method: Method, config: Config, num_devices: int) -> Planner:
    rank, final = config.model.lora_rank, config.pruning.target_sparsity
    bandit = config.bandit
    if method.name == "fedlora":
        return FixedPlanner(rank)
    if method.name in ("hetlora", "flexlora"):
        return TierRankPlanner(rank, tier_ranks(config), self_prune=method.name == "hetlora")
    if method.name == "prune-then-tune":
        return OneShotPlanner(rank, final)
    if method.name == "fedspine-fixed":
        return ScheduledPlanner(rank, final, config.run.rounds)
    if method.name == "fedspine-random":
        return RandomPlanner(
            final,
            bandit.rank_min,
            bandit.rank_max,
            config.run.seed,
            config.run.rounds,
            participation_rate(config),
            config.pruning.warmup_share,
        )
    from fedspine.methods.fedspine import BanditPlanner

    mode = "per-device" if method.name == "fedspine-perdevice" else bandit.mode
    return BanditPlanner(config, mode, num_devices)
