"""The unpruned baselines as their papers define them: the rule, what we build, each deviation.

The registry (`fedspine.methods.registry`) holds one row per method; this module holds the
baselines' own pieces (rank choices, planners) and, per baseline, the record of how faithful
it is. Where a paper leaves a choice open we take the one most favourable to the baseline.
Common to all of them: the task head (which the LLM papers do not have) is averaged by example
count as for every method here, and devices never prune (the papers have no pruned widths; the
rules below are written for kept rows / cols anyway, and pruned coordinates are handled as
described).

HetLoRA -- Cho, Liu, Manoel, Hou, Joshi, "Heterogeneous LoRA for Federated Fine-tuning of
On-Device Foundation Models", EMNLP 2024. Methods ``hetlora`` (default) and ``hetlora-examples``.
  Paper: each client k trains at its own rank r_k; the server keeps the global LoRA at r_max
  and sends client k its first r_k components (truncation); a client self-prunes its rank
  (a regulariser on the norm of its trailing components, dropped once that norm shrinks);
  aggregation zero-pads every client to r_max and averages A and B with the sparsity weights
  p_k = ||B_k A_k||_F / sum_j ||B_j A_j||_F.
  We build: ranks by announced tier (model.tier_ranks, weakest first), truncation down
  (`slice_factors`), zero-padding with the norm weights (aggregation ``sparsity-weighted``),
  and self-pruning after local training that sticks in later rounds.
  Deviations: (1) the norm is taken per adapted weight matrix (the paper's Delta W_k is a
  weight matrix's update); (2) self-pruning drops trailing components while they hold at most
  model.rank_tail_share (5%) of the summed component norms ||B[:, j]|| ||A[j, :]||, without the
  paper's regulariser: its lambda and decay are tuned per task and not given for ours, and a
  regulariser pulls the tail toward zero during training, which can only cost the baseline
  accuracy; the threshold rule costs at most 5% of the update's mass and needs no device state.
  ``hetlora-examples`` is this project's earlier simplified HetLoRA (example-count weights,
  aggregation ``zero-pad``), kept so the before/after can be rerun; ``hetlora`` is the paper's.

FlexLoRA -- Bai, Chen, Zhou, Li, "Federated Fine-tuning of Large Language Models under
Heterogeneous Tasks and Client Resources", NeurIPS 2024. Method ``flexlora``.
  Paper: clients train at their own ranks and upload B_i, A_i; the server averages the full
  deltas W_g = sum_i (n_i / N) B_i A_i (data-size weights) and gives each client the truncated
  SVD of W_g at its rank r_i.
  We build: ranks by tier, example-count weights, the averaged full delta, per-device truncated
  SVD down (aggregation ``masked-svd``; without pruning the per-coordinate mask is every
  coordinate, so it is exactly the paper's average). Fixed here: the server used to
  re-factorise W_g to the largest tier rank (16), truncating an average of up to 8 x 16 ranks
  on the server before redistribution and evaluation; the global now has rank
  clients_per_round x the largest tier rank, which holds W_g exactly (`flexlora_rank`).
  Open choices: the split of the singular values between B and A (the paper fixes only their
  product): sqrt(S) in each, balanced factors; every device's final model is scored with the
  exact W_g, the most favourable reading (not its rank-r_i truncation).

FLoRA -- Wang, Shen, Li, Zhou, Li, Jiang, Liu, "FLoRA: Federated Fine-Tuning Large Language
Models with Heterogeneous Low-Rank Adaptations", NeurIPS 2024. Method ``flora``.
  Paper: each client trains a fresh LoRA at its rank; the server stacks A = [A_1; ...; A_K] and
  B = [p_1 B_1, ..., p_K B_K] (p_k = n_k / N), so B A = sum_k p_k B_k A_k exactly (no cross
  terms), sends the stack to the clients, which merge it into their base weights and
  re-initialise their LoRA for the next round; the down-link grows with sum_k r_k.
  We build: ranks by tier (the paper's heterogeneous setting), `stack_factors` (exact), the
  stack merged into the global delta each round (aggregation ``stacking``; the server holds it
  exactly as factors at the modules' full rank, `full_rank`), a training device adds the merged
  delta at its kept coordinates to its sliced base and attaches a fresh peft LoRA (A seeded
  kaiming-uniform, B = 0). On the clock a device pays the stacks of every aggregation it has
  not merged yet, or the dense delta when that is smaller (`GlobalLora.stack_bytes`): with the
  paper's full participation that is exactly its stacked down-link; with 8 of 80 devices a
  round, a device that sat out rounds must catch up, as a real device keeping its merged base
  would. The simulated message carries the dense delta (simulated devices share one base in
  memory); the clock charges the wire bytes above, the cheaper of the two (favourable to it).
  Not the most favourable reading, and why: a server could instead broadcast every round's
  stack to all devices, so a participant would pay only the last stack on its round; but that
  download then happens while the device is idle, and a slow device (1 MB/s) cannot take in a
  10 MB stack during a 2-3 s round, so charging nothing for it would be wrong and charging it
  needs a model of idle bandwidth this simulation does not have. Paying at participation for
  what it has not merged is what it certainly costs; it is an upper bound on a device that
  syncs in the background, and it dominates FLoRA's round time (docs/results/baselines.md).
  Deviations: a device's fresh LoRA uses the same seeded init each round (the paper does not
  say how it seeds); a pruned device would get the delta sliced to its kept rows / cols.

FedSA-LoRA -- Guo, Zeng, Wang, Hu, Ding, Wu, Tao, Li, "Selective Aggregation for Low-Rank
Adaptation in Federated Learning", ICLR 2025. Method ``fedsa-lora``.
  Paper: A learns what clients share, B what is client-specific; clients upload only A, the
  server averages A (data-size weights) and returns it, each client keeps its own B across
  rounds; each client's model is W_0 + B_k A.
  We build: one rank (model.lora_rank) for every device as in the paper; A averaged by example
  count (aggregation ``shared-a``); messages carry A alone (`LoraFactors.B` is None, no B bytes
  either way, and the server rejects an upload that carries B); each device keeps B in its own
  storage across rounds (`fedspine.device_state`, like the importance EMA; peft's zero init
  before its first round). Each device's own model (global A + its B) is scored: per round the
  representative participants, at the end every device; the evaluation harness reads the B
  from the device's storage in the run folder (not through the protocol) and saves them in
  the run (`device_own_b.safetensors`) for `compare`'s re-scoring.
  Deviations: the paper scores each client on its own local test split; here every method is
  scored on the same shared held-out set, so a B fitted to a device's skewed labels is judged
  on the pooled distribution. A device never sampled still has B = 0 (the base and the head),
  which is what it holds. `global_accuracy` of this method is the shared A with B = 0 (FedSA-LoRA
  has no global model): read `final_accuracy`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedspine.fleet.profiles import parse_tiers
from fedspine.methods.base import Planner
from fedspine.methods.planners import FixedPlanner, TierRankPlanner

if TYPE_CHECKING:
    from fedspine.config import Config


def tier_ranks(config: Config) -> dict[str, int]:
    """HetLoRA / FlexLoRA / FLoRA: the rank of each announced tier, weakest tier first
    (model.tier_ranks; tiers past the list take its last rank)."""
    ranks = [int(r) for r in config.model.tier_ranks.split(",")]
    tiers = sorted(parse_tiers(config.fleet.tiers), key=lambda t: t[1])
    return {name: ranks[min(i, len(ranks) - 1)] for i, (name, *_) in enumerate(tiers)}


def max_tier_rank(config: Config) -> int:
    """HetLoRA: the global LoRA's rank r_max, the largest tier rank."""
    return max(int(r) for r in config.model.tier_ranks.split(","))


def tier_planner(sticky: bool) -> Callable[[Config, int], Planner]:
    """Rank by announced tier; `sticky`: HetLoRA's self-pruned rank carries to later rounds."""

    def make(config: Config, num_devices: int) -> Planner:
        return TierRankPlanner(config.model.lora_rank, tier_ranks(config), sticky)

    return make


def flexlora_rank(config: Config) -> int:
    """FlexLoRA's server holds the averaged full delta W_g itself: one round's mean has rank at
    most the sum of its participants' ranks, so a global of this rank holds it exactly."""
    return max_tier_rank(config) * min(config.run.clients_per_round, config.fleet.num_devices)


def full_rank(config: Config) -> int:
    """0: the modules' full rank, resolved from the model (FLoRA's merged delta, exactly)."""
    return 0


def fedsa_planner(config: Config, num_devices: int) -> Planner:
    """FedSA-LoRA: one rank for every device (A is averaged across devices as it is)."""
    return FixedPlanner(config.model.lora_rank)
