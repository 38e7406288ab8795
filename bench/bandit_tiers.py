"""Which (sparsity, rank) the FedSpine planner gives each hardware tier: a model-free replay.

A real default run gives the bandit about 100 pulls, so one run's per-tier means are mostly
noise. This replays the same planner (`BanditPlanner`, with the registration probe) on the
default simulated fleet and clock for many seeds in seconds, with a synthetic device round in
place of training:

* time = compute + transfer from `fedspine.fleet.clock`: compute is the round's FLOPs
  (unpruned step FLOPs x steps, the part after the mid-round prune scaled by 1 - 0.9 p) over
  the device's throughput; transfer is a payload linear in the rank (calibrated on the
  default run: 0.33 MB per rank unit both ways, shrunk with the pruned widths);
* loss gain is drawn from U(0.6, 0.95), less for a larger pruning step this round; the update
  norm grows with sqrt(rank). Neither depends on the tier, so every difference between tiers
  comes from the clock, i.e. from what the bandit can learn about speed.

Usage: PYTHONPATH=src python bench/bandit_tiers.py [--seeds 20] [--set bandit.KEY=VALUE ...]
Prints per-tier mean sparsity and rank over the first and second half of the rounds and, per
setting, the weak-minus-strong differences with their spread over seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

import numpy as np

from fedspine.config import load_config
from fedspine.fleet.clock import compute_time_s, conditions_at, round_time_s
from fedspine.fleet.probe import simulate_probe
from fedspine.fleet.profiles import make_fleet
from fedspine.methods.base import DeviceView
from fedspine.methods.registry import get_method
from fedspine.protocol import DeviceReport, ParticipantOutcome
from fedspine.resources import fleet_spec_from

STEP_FLOPS = 3.2e10  # one local step of unpruned MiniLM-L12 (batch 8 x 48 tokens) with LoRA
BYTES_PER_RANK = 0.33e6 / 2  # each way, per rank unit (2.67 MB round trip at rank 8)
PRUNED_PAYLOAD_SHARE = 0.5  # share of the LoRA payload on pruned widths


def replay(overrides: list[str], seed: int) -> list[dict]:
    """One synthetic run; returns participant rows (tier, round, sparsity, rank)."""
    config = load_config("default", None, [*overrides, f"run.seed={seed}"])
    spec = fleet_spec_from(config.fleet, seed)
    fleet = make_fleet(spec)
    rounds, steps = config.run.rounds, config.train.local_steps
    method = get_method("fedspine")
    planner = method.make_planner(config, len(fleet))
    rng = np.random.default_rng(seed + 1000)
    round_bytes = int(2 * config.bandit.rank_max * BYTES_PER_RANK)  # full rank, both ways
    if method.probes(config):
        probes = {
            profile.device_id: simulate_probe(
                STEP_FLOPS, conditions_at(profile, spec, 1), spec.latency_s
            )
            for profile in fleet
        }
        planner.observe_probe(probes, STEP_FLOPS, round_bytes)
    sparsity = defaultdict(float)
    rows = []
    for round_num in range(1, rounds + 1):
        picks = rng.choice(len(fleet), size=config.run.clients_per_round, replace=False)
        outcomes = []
        for device_id in sorted(int(i) for i in picks):
            profile = fleet[device_id]
            view = DeviceView(device_id, sparsity[device_id], 0, 0, profile.tier)
            plan = planner.assign(round_num, view, final_round=False)
            before, after = sparsity[device_id], plan.target_sparsity
            flops = STEP_FLOPS * steps * (1 - 0.9 * (before + after) / 2)
            width = 1 - PRUNED_PAYLOAD_SHARE * after
            payload = int(BYTES_PER_RANK * plan.lora_rank * width)
            cond = conditions_at(profile, spec, round_num)
            time_s = round_time_s(flops, payload, payload, cond, spec.latency_s)
            compute_s = compute_time_s(flops, cond)
            gain = rng.uniform(0.6, 0.95) - 0.5 * (after - before)
            report = DeviceReport(
                ok=True,
                loss_before=1.0,
                loss_after=1.0 - gain,
                time_s=time_s,
                compute_s=compute_s,
                bytes_up=payload,
                bytes_down=payload,
                train_flops=flops,
                sparsity=after,
                lora_rank=plan.lora_rank,
            )
            norm = math.sqrt(plan.lora_rank) * rng.uniform(0.8, 1.2)
            outcomes.append(
                ParticipantOutcome(device_id, device_id, profile.tier, report, update_norm=norm)
            )
            sparsity[device_id] = after
            rows.append(
                {"tier": profile.tier, "round": round_num, "p": after, "rank": plan.lora_rank}
            )
        planner.observe(round_num, outcomes)
    return rows


def tier_means(rows: list[dict], rounds: int) -> dict[tuple[str, str], tuple[float, float]]:
    """(tier, half) -> (mean sparsity, mean rank)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        half = "first" if row["round"] <= rounds // 2 else "second"
        groups[(row["tier"], half)].append(row)
    return {
        key: (statistics.mean(r["p"] for r in rs), statistics.mean(r["rank"] for r in rs))
        for key, rs in groups.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--weak", default="tx2")
    parser.add_argument("--strong", default="agx-xavier")
    args = parser.parse_args()
    overrides = list(args.sets)
    rounds = load_config("default", None, overrides).run.rounds
    per_seed = [tier_means(replay(overrides, seed), rounds) for seed in range(args.seeds)]
    tiers = sorted({tier for means in per_seed for tier, _ in means})
    print(f"settings: {args.sets or 'defaults'}; {args.seeds} seeds")
    print(f"{'tier':12s} {'half':6s} {'sparsity':>9s} {'rank':>6s}")
    for tier in tiers:
        for half in ("first", "second"):
            vals = [m[(tier, half)] for m in per_seed if (tier, half) in m]
            p = statistics.mean(v[0] for v in vals)
            r = statistics.mean(v[1] for v in vals)
            print(f"{tier:12s} {half:6s} {p:9.3f} {r:6.2f}")
    for half in ("first", "second"):
        dp, dr = [], []
        for m in per_seed:
            if (args.weak, half) in m and (args.strong, half) in m:
                dp.append(m[(args.weak, half)][0] - m[(args.strong, half)][0])
                dr.append(m[(args.weak, half)][1] - m[(args.strong, half)][1])
        print(
            f"{half} half, {args.weak} minus {args.strong}: sparsity "
            f"{statistics.mean(dp):+.3f} (sd {statistics.stdev(dp):.3f}), rank "
            f"{statistics.mean(dr):+.2f} (sd {statistics.stdev(dr):.2f}); "
            f"seeds where the weak tier got higher sparsity or a lower rank: "
            f"{sum(1 for a, b in zip(dp, dr, strict=True) if a > 0 or b < 0)}/{len(dp)}"
        )


if __name__ == "__main__":
    main()
