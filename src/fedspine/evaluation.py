"""Server-side evaluation of device models: a device's pruned structure + the global LoRA.

Evaluation is server work: it is not added to simulated time. No Flower here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from fedspine.device_round import with_own_b
from fedspine.device_state import DeviceStateStore
from fedspine.generative_eval import evaluate_generation
from fedspine.global_state import GlobalLora
from fedspine.lora.peft_io import (
    add_to_base,
    attach_lora,
    get_lora_factors,
    set_head_state,
    set_lora_factors,
)
from fedspine.models.loading import LoadedModel
from fedspine.pruning import KeptIndices, build_pruned_model, module_kept_indices
from fedspine.pruning.kept import structure_keys
from fedspine.resources import RunResources
from fedspine.train import TokenisedData, evaluate


def device_model(
    base: LoadedModel,
    global_lora: GlobalLora,
    kept: KeptIndices,
    own_b: dict[str, torch.Tensor] | None = None,
):
    """Rebuild a device's model: slice the shared base, attach the global LoRA at max rank.

    FLoRA: the merged global delta is added to the sliced base (exact, no LoRA needed).
    FedSA-LoRA: the global A with the device's own B (`own_b`; None: a device that never
    trained, whose B is still peft's zero init).
    """
    rows, cols = rows_cols(base, kept)
    model = build_pruned_model(base.model, kept)
    merges = global_lora.rule.merges_into_base
    if merges:
        add_to_base(model, global_lora.merged_delta(rows, cols))
    rank = 1 if merges else global_lora.max_rank
    peft_model = attach_lora(model, base.adapter, rank, global_lora.alpha_per_rank, 0.0, seed=0)
    if not merges:
        factors = global_lora.downlink(rows, cols, rank)
        if global_lora.rule.shares_only_a:
            empty = {n: torch.zeros_like(f.B) for n, f in get_lora_factors(peft_model).items()}
            factors = with_own_b(factors, own_b or empty)
        set_lora_factors(peft_model, factors)
    set_head_state(peft_model, global_lora.head)
    return peft_model


def full_kept(res: RunResources) -> KeptIndices:
    return KeptIndices.full(res.base.adapter, res.base.model.config)


def rows_cols(base: LoadedModel, kept: KeptIndices) -> tuple[dict, dict]:
    """Per LoRA module, the kept output rows and input columns (None = all) in full coordinates."""
    per_module = module_kept_indices(base.adapter, kept)
    return ({n: r for n, (r, _) in per_module.items()}, {n: c for n, (_, c) in per_module.items()})


def scoring_precision(res: RunResources):
    """The forward passes of scoring run at the run's training precision (`train.precision`),
    on the base model's device: under bf16 autocast on this CPU MiniLM scores 3x faster."""
    if res.config.train.precision == "bf16":
        return torch.autocast(res.base.model.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_device(
    res: RunResources,
    global_lora: GlobalLora,
    kept: KeptIndices,
    data: TokenisedData,
    own_b: dict[str, torch.Tensor] | None = None,
) -> dict:
    """{"accuracy", "loss"} of a device model; generate: accuracy is the primary answer score
    and "per_category" is added. `own_b`: FedSA-LoRA's B of that device."""
    model = device_model(res.base, global_lora, kept, own_b)
    with scoring_precision(res):
        if not res.generative:
            return evaluate(model, data)
        return evaluate_generation(
            model,
            res.base.tokenizer,
            data,
            res.label_names,
            res.config.eval.max_new_tokens,
            res.answer_metrics,
        )


def final_eval_subset(res: RunResources) -> TokenisedData:
    """The same seeded test subset for every device's final model."""
    n = min(res.config.eval.final_eval_examples, len(res.test))
    idx = np.sort(
        np.random.default_rng(res.config.run.seed + 2).choice(len(res.test), n, replace=False)
    )
    return res.test.subset(idx.tolist())


def representative(
    kept_by_device: dict[int, KeptIndices], sparsity: dict[int, float], count: int
) -> list[int]:
    """Devices to score in a round: the least and most pruned participants (cheap and telling)."""
    return evenly_spaced(sorted(kept_by_device, key=lambda d: (sparsity[d], d)), count)


def evenly_spaced(ordered: list[int], count: int) -> list[int]:
    """`count` items evenly spaced through `ordered`, first and last included (all when
    count >= len)."""
    if len(ordered) <= count:
        return list(ordered)
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in sorted(set(picks.tolist()))]


def every_kth_device(device_ids: list[int], count: int) -> list[int]:
    """`count` ids evenly spaced through the sorted ids (all of them when count >= len).

    Tiers are laid out in id blocks, so an even stride keeps the fleet's tier mix.
    """
    return evenly_spaced(sorted(device_ids), count)


def device_accuracies(
    res: RunResources,
    global_lora: GlobalLora,
    kept: list[KeptIndices],
    data: TokenisedData,
    own_b: list[dict[str, torch.Tensor] | None] | None = None,
) -> list[float]:
    """Accuracy of each device structure with the global LoRA on `data` (a structure shared by
    several devices, e.g. every unpruned one, is scored once). FedSA-LoRA: `own_b`, one per
    device, makes every device's model its own (each is scored)."""
    if own_b is not None:
        return [
            evaluate_device(res, global_lora, structure, data, b)["accuracy"]
            for structure, b in zip(kept, own_b, strict=True)
        ]
    cache: dict[str, float] = {}
    scores = []
    for structure, key in zip(kept, structure_keys(kept), strict=True):
        if key not in cache:
            cache[key] = evaluate_device(res, global_lora, structure, data)["accuracy"]
        scores.append(cache[key])
    return scores


def stored_own_b(state_root: Path, device_id: int) -> dict[str, torch.Tensor] | None:
    """FedSA-LoRA: a simulated device's latest B from its own storage (None: it never trained).

    Read by the evaluation harness only (server-side scoring of each device's own model, which
    is not part of the protocol): B is never in an uplink.
    """
    return DeviceStateStore(state_root, device_id).load_own_b(2**31)
