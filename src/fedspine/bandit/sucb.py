"""Smooth UCB (S-UCB): a tree bandit over the continuous (pruning ratio, log2 LoRA rank) box.

Paper fact (FedSpine, arXiv 2501.02438): per device and round the server picks (p, r) with an
online bandit on the continuous space that partitions it and refines the partition.
The mechanics are [our choice] (method.md step 9), HOO / zooming style:

* Coordinates are normalised to [0, 1]^2: p linearly, the rank on a log2 scale. A degenerate
  range (p_min == p_max or r_min == r_max) is a zero-width side that is never split.
* Each cell keeps a (discounted) count n and mean reward. Leaf index
  ``mean + c * sqrt(log(1 + t) / n) + smoothness * diam``; an unvisited leaf has index +inf.
  We pick the best *leaf* directly (no HOO B-value propagation): simpler, and the diameter
  term already carries the smoothness bonus of coarse cells. Ties are broken by the seeded RNG.
* The chosen leaf is sampled uniformly; a leaf splits in two along its longest normalised side
  once it has been pulled ``ceil(SPLIT_AFTER * SPLIT_GROWTH ** depth)`` times (deeper cells need
  more evidence), up to ``MAX_DEPTH``. Children inherit their parent's mean at weight
  ``INHERIT_WEIGHT`` (1; 0 would start children unvisited, index +inf). With +inf children
  every split forces two visits, so a tree with a few dozen pulls (a speed group's whole run at
  1-2 participations per device) only explores: two default runs whose reward differed
  (bandit.time_slack 0 vs 1) proposed identical arms for 11 rounds. Inheriting lets a child
  compete by what its parent learned; on the synthetic bump of tests/test_sucb.py it cut regret
  over the first 100 pulls from 26.4 to 20.9 (5 seeds) and the 80-device shared fleet's from 297
  to 251, with the same recovery after a shift.
* ``DISCOUNT`` < 1 decays a cell's count and reward sum each time the cell is pulled
  (n <- DISCOUNT * n + 1, sum <- DISCOUNT * sum + reward), so a cell remembers about
  1 / (1 - DISCOUNT) pulls: when the reward function shifts (a device's power mode, a later
  training phase) the exploited cells' means follow within that many pulls and the bandit moves
  on. We tried decaying every cell per round (discounted UCB) instead: with a refined tree it
  spreads the small discounted mass over many leaves and degenerates into exploring;
  per-visit decay recovered better and also lowered stationary regret. 1.0 = plain averages.
  ``t`` in the bonus is the undiscounted number of updates.
* Ranks: the sampled continuous log2 rank is rounded to a power of two (the usual LoRA ranks;
  the range ends must be powers of two). The Arm keeps the continuous point so ``update``
  credits the exact cell that proposed it.
* ``propose(p_floor, p_cap)``: pruning is monotone, so p must lie in [p_floor, p_cap]
  (current sparsity, final target). Only leaves meeting that interval compete and p is sampled
  inside the intersection. If the interval misses the box, p is the point of [p_floor, p_cap]
  nearest the box and the bandit reasons at the nearest box edge.

``BanditPool`` (below) holds the trees of a fleet: one per device (the paper's mode) or shared
by devices of similar observed speed (our choice, see its docstring and grouping.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedspine.bandit.grouping import (
    TreeSource,
    choose_tree_source,
    smoothed_log2_speed,
    speed_bucket,
)
from fedspine.errors import ConfigError

ArmCost = Callable[[float, int], float]  # (prune ratio, rank) -> known cost of the arm
COST_DRAWS = 8  # points drawn per leaf when a known cost picks among them
# Tree mechanics (module docstring): splitting, depth limit, per-visit decay, inheritance.
SPLIT_AFTER = 2.0  # pulls before the root splits
SPLIT_GROWTH = 1.5  # a cell at depth d splits after ceil(SPLIT_AFTER * SPLIT_GROWTH ** d) pulls
MAX_DEPTH = 10
DISCOUNT = 0.95  # per-visit decay of a cell's count and reward sum (1.0 = plain averages)
INHERIT_WEIGHT = 1.0  # weight at which children start from their parent's mean
# BanditPool sharing (its docstring): which tree proposes, and how speeds are smoothed.
OWN_AFTER = 20  # a device's own pulls before its own tree proposes
GROUP_AFTER = 4  # a speed group's pulls before its tree proposes for the group's devices
SPEED_EMA = 0.5  # weight of a new speed in the device's log2-speed moving average


@dataclass(frozen=True)
class Arm:
    """One configuration for one device and round."""

    prune_ratio: float
    lora_rank: int
    # The continuous log2 rank sampled before rounding (None for an arm built by hand).
    log2_rank_point: float | None = field(default=None, compare=False)


@dataclass
class _Cell:
    lo: tuple[float, float]  # normalised (p, log2 r) lower corner
    hi: tuple[float, float]
    depth: int
    weight: float = 0.0  # pull count, decayed per visit by `discount`
    reward_sum: float = 0.0  # reward sum, decayed the same way
    pulls: int = 0  # undiscounted pulls while a leaf: drives splitting
    children: tuple[int, int] | None = None
    split_dim: int = -1
    split_at: float = 0.0

    @property
    def diameter(self) -> float:
        return math.hypot(self.hi[0] - self.lo[0], self.hi[1] - self.lo[1])


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


class SmoothUCB:
    """S-UCB over [p_min, p_max] x [log2 r_min, log2 r_max]; see the module docstring."""

    def __init__(
        self,
        p_range: tuple[float, float],
        rank_range: tuple[int, int],
        c: float = 0.5,
        smoothness: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.config: dict[str, Any] = {
            "p_range": (float(p_range[0]), float(p_range[1])),
            "rank_range": (int(rank_range[0]), int(rank_range[1])),
            "c": float(c),
            "smoothness": float(smoothness),
            "seed": int(seed),
        }
        self._validate()
        self._p_lo, self._p_hi = self.config["p_range"]
        self._u_lo, self._u_hi = (math.log2(r) for r in self.config["rank_range"])
        root_hi = (1.0 if self._p_hi > self._p_lo else 0.0, 1.0 if self._u_hi > self._u_lo else 0.0)
        self._cells: list[_Cell] = [_Cell(lo=(0.0, 0.0), hi=root_hi, depth=0)]
        self._leaves: list[int] = [0]
        self.t = 0  # number of updates so far
        self._rng = np.random.default_rng(seed)

    def _validate(self) -> None:
        cfg = self.config
        (p_min, p_max), (r_min, r_max) = cfg["p_range"], cfg["rank_range"]
        pow2_ok = _is_power_of_two(r_min) and _is_power_of_two(r_max)
        checks = [
            (
                0.0 <= p_min <= p_max < 1.0,
                f"p_range must satisfy 0 <= min <= max < 1, got {(p_min, p_max)}",
            ),
            (1 <= r_min <= r_max, f"rank_range must satisfy 1 <= min <= max, got {(r_min, r_max)}"),
            (pow2_ok, f"rank_range ends must be powers of two, got {(r_min, r_max)}"),
            (cfg["c"] >= 0 and cfg["smoothness"] >= 0, "c and smoothness must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"S-UCB: {message}")

    # ------------------------------------------------------------------ statistics
    def _index(self, cell: _Cell, log_t: float) -> float:
        if cell.weight <= 0:
            return math.inf
        mean = cell.reward_sum / cell.weight
        bonus = self.config["c"] * math.sqrt(log_t / cell.weight)
        return mean + bonus + self.config["smoothness"] * cell.diameter

    @property
    def pulls(self) -> int:
        """Total number of updates (undiscounted)."""
        return self.t

    # ------------------------------------------------------------------ coordinates
    def _norm_p(self, p: float) -> float:
        span = self._p_hi - self._p_lo
        return 0.0 if span == 0 else min(max((p - self._p_lo) / span, 0.0), 1.0)

    def _norm_u(self, log2_rank: float) -> float:
        span = self._u_hi - self._u_lo
        return 0.0 if span == 0 else min(max((log2_rank - self._u_lo) / span, 0.0), 1.0)

    def _rank_of(self, u_norm: float) -> tuple[int, float]:
        log2_rank = self._u_lo + u_norm * (self._u_hi - self._u_lo)
        r_min, r_max = self.config["rank_range"]
        rank = 2 ** round(log2_rank)
        return int(min(max(rank, r_min), r_max)), log2_rank

    # ------------------------------------------------------------------ propose
    def propose(
        self, p_floor: float = 0.0, p_cap: float | None = None, cost: ArmCost | None = None
    ) -> Arm:
        """Next arm, with p in [p_floor, p_cap] (monotone pruning, final target).

        ``cost(p, rank)``, when given, is a known part of the arm's value (the predicted
        straggler penalty, time_model.py) that the tree does not learn: every eligible leaf
        offers the cheapest of ``COST_DRAWS`` uniform points (its learned value is flat inside
        it), the largest rank among equally cheap ones (a device whose time costs nothing adds
        capacity for free), and competes by index minus that cost; among unvisited leaves
        (index +inf) the cheapest point wins.
        """
        cap = self._p_hi if p_cap is None else float(p_cap)
        if p_floor > cap + 1e-12:
            raise ValueError(f"p_floor {p_floor} is above p_cap {cap}")
        lo = self._norm_p(min(max(p_floor, self._p_lo), self._p_hi))
        hi = self._norm_p(max(min(cap, self._p_hi), self._p_lo))
        if cost is not None:
            return self._propose_with_cost(lo, hi, p_floor, cap, cost)
        leaf = self._cells[self._best_leaf(lo, hi)]
        return self._arm_at(leaf, lo, hi, p_floor, cap)

    def _arm_at(self, leaf: _Cell, lo: float, hi: float, p_floor: float, cap: float) -> Arm:
        """A uniform point of the leaf (p inside [lo, hi]) as an arm."""
        p_norm = self._rng.uniform(max(lo, leaf.lo[0]), min(hi, leaf.hi[0]))
        u_norm = self._rng.uniform(leaf.lo[1], leaf.hi[1])
        p = self._p_lo + p_norm * (self._p_hi - self._p_lo)
        p = min(max(p, p_floor), cap)
        rank, log2_rank = self._rank_of(u_norm)
        return Arm(prune_ratio=float(p), lora_rank=rank, log2_rank_point=float(log2_rank))

    def _eligible(self, lo: float, hi: float) -> list[int]:
        return [
            i for i in self._leaves if self._cells[i].lo[0] <= hi and self._cells[i].hi[0] >= lo
        ]

    def _propose_with_cost(
        self, lo: float, hi: float, p_floor: float, cap: float, cost: ArmCost
    ) -> Arm:
        log_t = math.log1p(self.t)
        candidates = self._eligible(lo, hi)
        arms, costs = [], []
        for i in candidates:  # a leaf's learned value is flat inside it: take its cheapest draw
            draws = [self._arm_at(self._cells[i], lo, hi, p_floor, cap) for _ in range(COST_DRAWS)]
            draw_costs = [cost(arm.prune_ratio, arm.lora_rank) for arm in draws]
            # Cheapest first; at equal cost (a device that is no straggler pays nothing) the
            # larger rank: capacity the device can add without lengthening the round.
            cheapest = min(
                range(len(draws)), key=lambda j: (round(draw_costs[j], 9), -draws[j].lora_rank)
            )
            arms.append(draws[cheapest])
            costs.append(draw_costs[cheapest])
        costs = np.array(costs)
        index = np.array([self._index(self._cells[i], log_t) for i in candidates])
        unvisited = np.isinf(index)
        scores = np.where(unvisited, -costs, -np.inf) if unvisited.any() else index - costs
        best = np.flatnonzero(scores == scores.max())
        return arms[int(self._rng.choice(best))]

    def _best_leaf(self, lo: float, hi: float) -> int:
        log_t = math.log1p(self.t)
        candidates = self._eligible(lo, hi)
        scores = np.array([self._index(self._cells[i], log_t) for i in candidates])
        best = np.flatnonzero(scores == scores.max())
        return candidates[int(self._rng.choice(best))]

    # ------------------------------------------------------------------ update
    def update(self, arm: Arm, reward: float) -> None:
        """Credit ``reward`` to every cell on the path to the leaf holding the arm's point."""
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward!r}")
        log2_rank = arm.log2_rank_point
        point = (
            self._norm_p(arm.prune_ratio),
            self._norm_u(math.log2(arm.lora_rank) if log2_rank is None else log2_rank),
        )
        self.t += 1
        index = 0
        while True:
            cell = self._cells[index]
            cell.weight = cell.weight * DISCOUNT + 1.0
            cell.reward_sum = cell.reward_sum * DISCOUNT + reward
            if cell.children is None:
                break
            index = cell.children[0] if point[cell.split_dim] < cell.split_at else cell.children[1]
        cell.pulls += 1
        self._maybe_split(index)

    def _maybe_split(self, index: int) -> None:
        cell = self._cells[index]
        threshold = math.ceil(SPLIT_AFTER * SPLIT_GROWTH**cell.depth)
        widths = (cell.hi[0] - cell.lo[0], cell.hi[1] - cell.lo[1])
        if cell.pulls < threshold or cell.depth >= MAX_DEPTH or max(widths) <= 0:
            return
        dim = 0 if widths[0] >= widths[1] else 1
        mid = (cell.lo[dim] + cell.hi[dim]) / 2
        left_hi = (mid, cell.hi[1]) if dim == 0 else (cell.hi[0], mid)
        right_lo = (mid, cell.lo[1]) if dim == 0 else (cell.lo[0], mid)
        prior = min(INHERIT_WEIGHT, cell.weight)
        prior_sum = prior * cell.reward_sum / cell.weight if cell.weight > 0 else 0.0
        left = _Cell(
            lo=cell.lo, hi=left_hi, depth=cell.depth + 1, weight=prior, reward_sum=prior_sum
        )
        right = _Cell(
            lo=right_lo, hi=cell.hi, depth=cell.depth + 1, weight=prior, reward_sum=prior_sum
        )
        self._cells.extend([left, right])
        cell.children = (len(self._cells) - 2, len(self._cells) - 1)
        cell.split_dim, cell.split_at = dim, mid
        self._leaves.remove(index)
        self._leaves.extend(cell.children)


PoolMode = Literal["per-device", "shared"]


class BanditPool:
    """S-UCB trees for a fleet: one per device (paper) or shared by speed group (our choice).

    ``per-device``: each device has its own tree; ``effective_speed`` is ignored.
    ``shared``: every update goes to three trees, the fleet-wide one, the tree of the device's
    current speed bucket (grouping.py) and the device's own tree. A proposal comes from the
    device's own tree once it has ``OWN_AFTER`` pulls, else from its group's tree once that has
    ``GROUP_AFTER`` pulls, else from the fleet tree (an unseen device, a new bucket).
    """

    def __init__(
        self,
        mode: PoolMode,
        p_range: tuple[float, float],
        rank_range: tuple[int, int],
        bucket_width_log2: float = 0.5,
        tree_options: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in ("per-device", "shared"):
            raise ConfigError(f"bandit mode must be 'per-device' or 'shared', got {mode!r}")
        if bucket_width_log2 <= 0:
            raise ConfigError("bandit: bucket_width_log2 must be > 0")
        self.config: dict[str, Any] = {
            "mode": mode,
            "p_range": tuple(p_range),
            "rank_range": tuple(rank_range),
            "bucket_width_log2": float(bucket_width_log2),
            "tree_options": dict(tree_options or {}),
            "seed": int(seed),
        }
        SmoothUCB(p_range, rank_range, **self.config["tree_options"])  # validate once, early
        self._own: dict[Any, SmoothUCB] = {}
        self._groups: dict[int, SmoothUCB] = {}
        self._fleet: SmoothUCB | None = None
        self._log2_speed: dict[Any, float] = {}
        self._reference_log2: float | None = None  # first speed seen: centre of bucket 0
        self._trees_made = 0

    def _new_tree(self) -> SmoothUCB:
        sequence = np.random.SeedSequence([self.config["seed"], self._trees_made])
        seed = int(sequence.generate_state(1)[0])
        self._trees_made += 1
        options = {**self.config["tree_options"], "seed": seed}
        return SmoothUCB(self.config["p_range"], self.config["rank_range"], **options)

    def _own_tree(self, device_id: Any) -> SmoothUCB:
        if device_id not in self._own:
            self._own[device_id] = self._new_tree()
        return self._own[device_id]

    def _group_tree(self, bucket: int) -> SmoothUCB:
        if bucket not in self._groups:
            self._groups[bucket] = self._new_tree()
        return self._groups[bucket]

    def _fleet_tree(self) -> SmoothUCB:
        if self._fleet is None:
            self._fleet = self._new_tree()
        return self._fleet

    def group_of(self, device_id: Any) -> int | None:
        """The device's current speed bucket (None until its speed is known or per-device)."""
        if self.config["mode"] != "shared" or device_id not in self._log2_speed:
            return None
        return speed_bucket(
            self._log2_speed[device_id], self._reference_log2, self.config["bucket_width_log2"]
        )

    def source_of(self, device_id: Any) -> TreeSource:
        """Which tree the next proposal for this device comes from (for logging)."""
        own_pulls = self._own[device_id].pulls if device_id in self._own else 0
        if self.config["mode"] == "per-device":
            return "own"
        bucket = self.group_of(device_id)
        group_pulls = (
            None
            if bucket is None
            else (self._groups[bucket].pulls if bucket in self._groups else 0)
        )
        return choose_tree_source(own_pulls, group_pulls, OWN_AFTER, GROUP_AFTER)

    def propose(
        self,
        device_id: Any,
        p_floor: float = 0.0,
        p_cap: float | None = None,
        cost: ArmCost | None = None,
    ) -> Arm:
        source = self.source_of(device_id)
        if source == "own":
            tree = self._own_tree(device_id)
        elif source == "group":
            tree = self._group_tree(self.group_of(device_id))
        else:
            tree = self._fleet_tree()
        return tree.propose(p_floor, p_cap, cost)

    def observe_speed(self, device_id: Any, effective_speed: float) -> None:
        """A speed measured outside a round (registration probe): places the device in a group
        before its first pull; ignored per-device."""
        if self.config["mode"] == "per-device":
            return
        log2_speed = smoothed_log2_speed(
            self._log2_speed.get(device_id), effective_speed, SPEED_EMA
        )
        self._log2_speed[device_id] = log2_speed
        if self._reference_log2 is None:
            self._reference_log2 = log2_speed

    def update(
        self, device_id: Any, arm: Arm, reward: float, effective_speed: float | None = None
    ) -> None:
        """Record a device's reward; ``effective_speed`` (work units / s) regroups it."""
        self._own_tree(device_id).update(arm, reward)
        if self.config["mode"] == "per-device":
            return
        if effective_speed is not None:
            self.observe_speed(device_id, effective_speed)
        self._fleet_tree().update(arm, reward)
        bucket = self.group_of(device_id)
        if bucket is not None:
            self._group_tree(bucket).update(arm, reward)
