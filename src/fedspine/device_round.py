"""One device's round: rebuild its pruned model, train LoRA, prune on schedule, cost the work.

This is the client behaviour of every method; a method differs only in the plan it sends
(rank, this round's target sparsity) and its device recipe (`protocol.DeviceRecipe`:
iterative prune-and-tune, one-shot pruning, rank self-pruning or none). No Flower here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from fedspine.config import TrainSection
from fedspine.fleet.clock import conditions_at, round_time_s
from fedspine.fleet.cost import (
    exceeds_budget,
    training_flops,
    training_memory_bytes,
)
from fedspine.fleet.inference_budget import deployed_latency_ms, fit_budget
from fedspine.fleet.profiles import DeviceProfile
from fedspine.lora.factors import LoraFactors
from fedspine.lora.peft_io import (
    add_to_base,
    attach_lora,
    get_head_state,
    get_lora_factors,
    set_head_state,
    set_lora_factors,
)
from fedspine.lora.rank_pruning import self_pruned_rank, truncate_rank
from fedspine.protocol import (
    DevicePlan,
    DeviceRecipe,
    DeviceReport,
    Downlink,
    Uplink,
    factors_to_tensors,
    payload_bytes,
)
from fedspine.pruning import (
    KeptIndices,
    ModelScores,
    build_pruned_model,
    prune_step,
    sparsity_report,
    taylor_importance,
)
from fedspine.pruning.fleet_importance import scores_to_tensors
from fedspine.pruning.importance import IMPORTANCE, GroupImportance
from fedspine.resources import RunResources
from fedspine.train import (
    TokenisedData,
    label_log_prior,
    make_optimizer,
    train_local,
    training_loss,
)


@dataclass(frozen=True)
class DeviceRoundResult:
    uplink: Uplink  # what the device sends back
    carried_scores: ModelScores | None = None  # its smoothed importance, kept across rounds
    carried_b: dict[str, torch.Tensor] | None = None  # FedSA-LoRA: its own B, kept across rounds


def own_budget_target(res: RunResources, device: DeviceProfile) -> dict:
    """Budget mode: the device fits its inference budget on its own hardware (registration
    fields: its target sparsity, the budget, its modelled latency there, whether it meets it)."""
    if res.budget is None:
        return {}
    budget_ms, memory_mb = res.budget
    fit = fit_budget(res.cost_curve, device.flops_per_s, budget_ms, memory_mb)
    return {
        "target_sparsity": fit.target_sparsity,
        "budget_ms": budget_ms,
        "latency_ms": fit.latency_ms,
        "meets_budget": fit.meets,
    }


def prune_points(local_steps: int, interval: int) -> list[int]:
    """Steps after which to prune: every `interval` steps, always leaving steps to recover."""
    points = list(range(interval, local_steps, interval))
    return points or [max(1, local_steps // 2)]


def sparsity_schedule(start: float, target: float, points: int) -> list[float]:
    """Equal steps from the current sparsity to this round's target."""
    return [start + (target - start) * (j + 1) / points for j in range(points)]


def _payload(result_factors, head, scores: ModelScores | None = None) -> int:
    extra = payload_bytes(scores_to_tensors(scores)) if scores is not None else 0
    return payload_bytes(factors_to_tensors(result_factors)) + payload_bytes(head) + extra


def _device_model(
    res: RunResources,
    device: DeviceProfile,
    plan: DevicePlan,
    kept: KeptIndices,
    down_head: dict[str, torch.Tensor],
    merged: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """The device's pruned model (sliced from the shared base, plus FLoRA's merged delta)
    with peft's seeded LoRA init and the down-linked head (the caller loads the LoRA)."""
    cfg = res.config
    model = build_pruned_model(res.base.model, kept)
    if merged:
        add_to_base(model, merged)
    peft_model = attach_lora(
        model,
        res.base.adapter,
        plan.lora_rank,
        cfg.model.lora_alpha_per_rank,
        cfg.model.lora_dropout,
        seed=cfg.run.seed + device.device_id,
    )
    if down_head:
        set_head_state(peft_model, down_head)
    return peft_model


def with_own_b(
    factors: dict[str, LoraFactors], own_b: dict[str, torch.Tensor]
) -> dict[str, LoraFactors]:
    """FedSA-LoRA: the down-linked (global) A with the device's own B."""
    return {name: LoraFactors(A=f.A, B=own_b[name]) for name, f in factors.items()}


def run_device_round(
    res: RunResources,
    device: DeviceProfile,
    downlink: Downlink,
    prior_scores: ModelScores | None = None,
    data: TokenisedData | None = None,
    memory_budget: float | None = None,
    own_b: dict[str, torch.Tensor] | None = None,
) -> DeviceRoundResult:
    """Train (and prune) one device for one round and cost it on the simulated clock.

    `prior_scores` is the device's own importance EMA from earlier rounds; the down-link's
    `fleet_prior`, when the server shares one, the pooled fleet scores the EMA starts from
    instead. `data`: the device's own examples (device-local data; default: its partition of
    the shared pool). `memory_budget`: bytes training may use on a real device (measured
    clock; default: the simulated board's share). `own_b`: FedSA-LoRA's B this device kept
    from its last round.
    """
    cfg, plan = res.config, downlink.plan
    steps = plan.local_steps or cfg.train.local_steps
    if data is None:
        data = res.train.subset(res.partitions[device.device_id])
    local_b = plan.recipe is DeviceRecipe.LOCAL_B
    down_factors = downlink.factors
    peft_model = _device_model(res, device, plan, downlink.kept, downlink.head, downlink.merged)
    if local_b:  # B of the right (kept) height: its own, else peft's zero init
        initial = get_lora_factors(peft_model)
        own_b = own_b or {n: torch.zeros_like(f.B) for n, f in initial.items()}
        down_factors = with_own_b(down_factors, own_b)
    if down_factors:
        set_lora_factors(peft_model, down_factors)
    # 1. A configuration over the device's memory budget fails on that device only.
    memory = training_memory_bytes(peft_model, cfg.train.batch_size, cfg.data.max_seq_len)
    memory_mb = memory / 2**20
    if memory_budget is not None:
        over = memory > memory_budget
        error = f"training needs {memory_mb:.0f} MB, over its {memory_budget / 2**20:.0f} MB budget"
    else:
        over = exceeds_budget(memory, device, res.fleet_spec.memory_usable_fraction)
        error = f"training needs {memory_mb:.0f} MB, over the device's budget"
    if over:
        report = DeviceReport(ok=False, error=error, train_memory_mb=memory_mb)
        return DeviceRoundResult(Uplink(report, kept=downlink.kept), prior_scores, own_b)
    # 2. Local training with scheduled prune steps (or one-shot pruning first).
    pruner = _Pruner(res, peft_model, downlink, steps, data, prior_scores)
    if pruner.one_shot_now:
        pruner.one_shot()
    rates = round_learning_rates(cfg.train, plan.round_num)
    heads = res.base.adapter.task_head_modules()

    def new_optimizer() -> torch.optim.Optimizer:  # over the model's current LoRA tensors
        return make_optimizer(peft_model, *rates, cfg.train.weight_decay, heads)

    stats = train_local(
        peft_model,
        data,
        steps,
        cfg.train.batch_size,
        new_optimizer,
        seed=cfg.run.seed * 100_003 + plan.round_num * 1009 + device.device_id,
        after_backward=pruner.after_backward,
        after_step=pruner.after_step,
        logit_offset=label_log_prior(data.labels, len(res.label_names), cfg.train.logit_adjustment),
        precision=cfg.train.precision,
    )
    # 3. Up-link: LoRA in the device's own coordinates (HetLoRA may shed rank), costed.
    factors, head = get_lora_factors(peft_model), get_head_state(peft_model)
    rank = plan.lora_rank
    if plan.recipe is DeviceRecipe.RANK_SELF_PRUNE:
        rank = self_pruned_rank(factors, cfg.model.rank_tail_share)
        factors = truncate_rank(factors, rank)
    kept_b = None
    if local_b:  # FedSA-LoRA: B stays here for the next round; A alone goes up
        kept_b = {name: f.B for name, f in factors.items()}
        factors = {name: LoraFactors(A=f.A, B=None) for name, f in factors.items()}
    uploaded = pruner.importance.smoothed if pruner.importance is not None else None
    report = _round_report(
        res,
        device,
        plan,
        peft_model,
        pruner,
        stats,
        _payload(factors, head, uploaded),
        _payload(downlink.factors, downlink.head, downlink.fleet_prior)
        + downlink.merged_wire_bytes,
    )
    report = replace(report, train_memory_mb=memory_mb, lora_rank=rank)
    if res.budget is not None:  # the deployed model's latency on this device's hardware
        latency = deployed_latency_ms(
            res.base.model.config,
            pruner.kept,
            cfg.data.max_seq_len,
            device.flops_per_s,
            causal=res.generative,
        )
        report = replace(report, latency_ms=latency)
    uplink = Uplink(report, pruner.kept, factors, head, uploaded)
    carried = uploaded if uploaded is not None else prior_scores
    return DeviceRoundResult(uplink, carried, kept_b if local_b else own_b)


def _round_report(
    res: RunResources,
    device: DeviceProfile,
    plan: DevicePlan,
    peft_model: torch.nn.Module,
    pruner: _Pruner,
    stats,
    bytes_up: int,
    bytes_down: int,
) -> DeviceReport:
    """The device's report: losses, work, simulated time from real FLOPs and bytes, sparsity."""
    cfg = res.config
    cond = conditions_at(device, res.fleet_spec, plan.round_num)
    probe_flops = training_flops(
        peft_model, 2 * cfg.train.batch_size, cfg.data.max_seq_len, forward_only=True
    )  # the loss probe before and after
    compute_flops = pruner.flops + probe_flops
    sparsity = sparsity_report(pruner.kept, res.base.model.config)
    return DeviceReport(
        ok=True,
        num_examples=len(pruner.data),
        examples_processed=stats.examples,
        loss_before=stats.loss_before,
        loss_after=stats.loss_after,
        time_s=round_time_s(compute_flops, bytes_up, bytes_down, cond, device.latency_s),
        compute_s=compute_flops / cond.flops_per_s,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        train_flops=compute_flops,
        train_wall_s=stats.train_wall_s,
        train_tokens=stats.tokens,
        sparsity=sparsity["structures_removed"],
        param_sparsity=sparsity["non_embedding_params_removed"],
        params=sparsity["params"],
    )


def time_one_step(
    res: RunResources, device: DeviceProfile, data: TokenisedData, rank: int
) -> float:
    """Wall seconds of one local training step of the unpruned model with rank-`rank` LoRA on
    one batch of the device's data (the measured registration probe)."""
    cfg = res.config
    plan = DevicePlan(round_num=1, lora_rank=rank)
    full = KeptIndices.full(res.base.adapter, res.base.model.config)
    model = _device_model(res, device, plan, full, {})
    heads = res.base.adapter.task_head_modules()
    optimizer = make_optimizer(model, *round_learning_rates(cfg.train, 1), 0.0, heads)
    batch = data.batch(list(range(min(len(data), cfg.train.batch_size))))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
    model.train()
    start = time.perf_counter()
    with autocast:
        loss = training_loss(model, batch, None)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def round_learning_rates(train: TrainSection, round_num: int) -> tuple[float, float]:
    """(LoRA lr, head lr) of round `round_num` (1-based): both x lr_decay ** (round_num - 1).

    Local AdamW restarts every round, so each round moves every weight by about lr per step in
    its own data's direction whatever the gradient's size; under label skew the global model
    then swings from round to round. A per-round decay damps that without a horizon, so it
    works under a time budget too (1.0 = constant, the default).
    """
    scale = train.lr_decay ** max(0, round_num - 1)
    return train.learning_rate * scale, train.head_learning_rate * scale


class _Pruner:
    """Scores groups while training and prunes at the scheduled steps (FedSpine step 4)."""

    def __init__(
        self,
        res,
        peft_model,
        downlink: Downlink,
        steps: int,
        data,
        prior_scores: ModelScores | None = None,
    ) -> None:
        plan = downlink.plan
        self.res, self.model, self.kept, self.plan, self.data = (
            res,
            peft_model,
            downlink.kept,
            plan,
            data,
        )
        cfg = res.config
        self.adapter = res.base.adapter
        self.batch, self.seq = cfg.train.batch_size, cfg.data.max_seq_len
        start = sparsity_report(self.kept, res.base.model.config)["structures_removed"]
        # prune-then-tune prunes once, on the first round it is below its target
        self.one_shot_now = (
            plan.recipe is DeviceRecipe.ONE_SHOT_PRUNE and start < plan.target_sparsity - 1e-6
        )
        self.active = (
            plan.recipe is DeviceRecipe.PRUNE_AND_TUNE and plan.target_sparsity > start + 1e-9
        )
        points = prune_points(steps, cfg.pruning.prune_interval)
        self.schedule = dict(
            zip(points, sparsity_schedule(start, plan.target_sparsity, len(points)), strict=False)
        )
        self.importance: GroupImportance | None = None
        if self.active:
            make = IMPORTANCE[cfg.pruning.importance]
            self.importance = make(self.adapter, cfg.pruning.ema_beta, downlink.fleet_prior)
            if downlink.fleet_prior is None and prior_scores is not None:
                self.importance.resume(prior_scores)
        self.flops = 0.0
        self.shape_version = 0  # bumped by every prune step: the FLOP cache key
        self._flops_cache: dict[tuple[int, int, int], float] = {}

    def after_backward(self, step: int, batch: dict[str, torch.Tensor]) -> None:
        self.flops += self._step_flops(*batch["input_ids"].shape)
        if self.importance is not None:
            self.importance.observe(self.model, self.kept)

    def _step_flops(self, sequences: int, length: int) -> float:
        """Training FLOPs of one batch at the model's current shape (cached per shape)."""
        key = (self.shape_version, sequences, length)
        if key not in self._flops_cache:
            self._flops_cache[key] = training_flops(self.model, sequences, length)
        return self._flops_cache[key]

    def after_step(self, step: int, batch: dict[str, torch.Tensor]) -> bool:
        """Prune at the scheduled steps; True when LoRA tensors were sliced (new parameters).
        Scores are in original coordinates, so the importance EMA carries on."""
        if not self.active or step not in self.schedule:
            return False
        if self.importance.calibration_backward:  # its own pass with full weight gradients
            self.flops += self._calibration_flops()
        self.shape_version += 1
        self.kept = prune_step(
            self.model,
            self.adapter,
            self.importance.score(self.model, self.kept, self._calibration),
            self.kept,
            self.schedule[step],
            self.res.config.pruning.selection,
        )
        return True

    def _calibration_size(self) -> int:
        return min(len(self.data), 4 * self.batch)

    def _calibration(self) -> dict[str, torch.Tensor]:
        return self.data.batch(list(range(self._calibration_size())))

    def _calibration_flops(self) -> float:
        """One forward and backward of the calibration batch, gradients of the base included."""
        return training_flops(self.model, self._calibration_size(), self.seq, frozen_base=False)

    def one_shot(self) -> None:
        """Prune-then-tune: Taylor importance on a calibration batch, prune to the target."""
        calibration = self._calibration()
        self.flops += self._calibration_flops()
        scores = taylor_importance(self.model, self.adapter, self.kept, [calibration])
        self.kept = prune_step(
            self.model,
            self.adapter,
            scores,
            self.kept,
            self.plan.target_sparsity,
            self.res.config.pruning.selection,
        )
