"""Importance of heads and FFN channels: element importance of every projection, summed per group.

Scores are in ORIGINAL coordinates (full-length vectors per layer; removed structures keep
whatever score they had and are ignored by selection), so an EMA survives pruning steps.

Three element importances, registered by name in `IMPORTANCE` (what `pruning.importance`
names; config validation and the device read the same registry):
- `LoraTaylorImportance` [our choice, LoRAPrune-style, method.md step 5]: |W_eff * G_hat| with the
  merged-weight gradient estimated from the LoRA gradients only; EMA over calls.
- `magnitude_importance`: |W_eff|.
- `taylor_importance`: |W_eff * dL/dW| with true gradients on calibration batches (prune-then-tune).
Biases are not scored (no LoRA gradient reaches them); they go with their rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from fedspine.errors import ModelError
from fedspine.models.families import FamilyAdapter
from fedspine.pruning.groups import role_axes, structure_full_size, structure_index
from fedspine.pruning.kept import KeptIndices, kept_masks

ElementImportance = Callable[[nn.Module], torch.Tensor]  # projection -> (out, in), >= 0


@dataclass(frozen=True)
class LayerScores:
    """Group scores of one layer, full length: query heads (q rows + o columns), kv heads
    (k + v rows) and FFN channels (ffn_in rows + ffn_out column)."""

    heads: torch.Tensor
    kv_heads: torch.Tensor
    channels: torch.Tensor


ModelScores = tuple[LayerScores, ...]
KINDS = ("heads", "kv_heads", "channels")  # the fields of LayerScores


def merged_weight(module: nn.Module) -> torch.Tensor:
    """W + s B A over the active LoRA adapters (just W for a plain Linear); detached."""
    if not isinstance(module, LoraLayer):
        return module.weight.detach()
    weight = module.get_base_layer().weight.detach()
    for name in _active_lora(module):
        lora_a, lora_b = module.lora_A[name].weight, module.lora_B[name].weight
        weight = weight + module.scaling[name] * (lora_b.detach() @ lora_a.detach())
    return weight


def lora_gradient_estimate(module: nn.Module) -> torch.Tensor:
    """Estimate of dL/dW_eff from the LoRA factor gradients only: G_hat = s (G_B A + B G_A).

    Derivation: W_eff = W + s B A gives G_B = dL/dB = s G_W A^T and G_A = dL/dA = s B^T G_W.
    One SGD step on the factors (lr eta) moves the merged weight by
    dW = s (dB A + B dA) = -eta s (G_B A + B G_A), so G_hat = s (G_B A + B G_A) is the full-weight
    gradient that would produce the same first-order step: s^2 (G_W A^T A + B B^T G_W), i.e. G_W
    projected on the LoRA row/column spaces. Right after init B = 0, so G_A = 0 and the estimate
    is s G_B A = s^2 G_W A^T A, still informative. The constant scale cancels in per-layer
    ranking and normalisation.
    """
    if not isinstance(module, LoraLayer):
        raise ModelError("LoRA-gradient importance needs LoRA on every prunable projection")
    estimate = None
    for name in _active_lora(module):
        lora_a, lora_b = module.lora_A[name].weight, module.lora_B[name].weight
        if lora_a.grad is None or lora_b.grad is None:
            raise ModelError(
                "LoRA gradients are missing: call update() after loss.backward() and before "
                "optimizer.zero_grad()"
            )
        term = module.scaling[name] * (
            lora_b.grad @ lora_a.detach() + lora_b.detach() @ lora_a.grad
        )
        estimate = term if estimate is None else estimate + term
    return estimate


def _active_lora(module: LoraLayer) -> list[str]:
    return [name for name in module.active_adapters if name in module.lora_A]


def group_scores(
    model: nn.Module,
    adapter: FamilyAdapter,
    kept: KeptIndices,
    element_importance: ElementImportance,
) -> ModelScores:
    """Sum an element importance over the rows/columns of every head and channel group."""
    dims = kept.dims
    scores = []
    with torch.no_grad():
        for layer_idx, layer in enumerate(adapter.layer_modules(model)):
            totals = {
                kind: torch.zeros(structure_full_size(kept, kind))
                for kind in ("heads", "kv_heads", "channels")
            }
            for role, path in adapter.projection_paths().items():
                importance = element_importance(layer.get_submodule(path)).float()
                for axis, kind in enumerate(role_axes(role)):
                    if kind is not None:  # rows (axis 0) sum over columns and vice versa
                        index = structure_index(kept, layer_idx, kind)
                        totals[kind].index_add_(0, index, importance.sum(dim=1 - axis).cpu())
            scores.append(
                LayerScores(
                    heads=totals["heads"].view(dims.num_heads, dims.head_dim).sum(1),
                    kv_heads=totals["kv_heads"].view(dims.num_kv_heads, dims.head_dim).sum(1),
                    channels=totals["channels"],
                )
            )
    return tuple(scores)


def magnitude_importance(
    model: nn.Module, adapter: FamilyAdapter, kept: KeptIndices
) -> ModelScores:
    """|W_eff| summed per group: needs no data."""
    return group_scores(model, adapter, kept, lambda module: merged_weight(module).abs())


def _lora_taylor_element(module: nn.Module) -> torch.Tensor:
    return (merged_weight(module) * lora_gradient_estimate(module)).abs()


class LoraTaylorImportance:
    """LoRA-gradient Taylor scores smoothed by an EMA across `update()` calls.

    Call `update(model, kept)` after each local `loss.backward()` (before zero_grad); it needs
    no gradient of the frozen base. The first call initialises the average, from `prior` when
    one is given (e.g. the fleet-wide scores, see `fleet_importance`): the prior is rescaled to
    the first call's magnitude and the EMA continues from it, so local evidence refines it.
    """

    calibration_backward = False  # reads the local steps' own LoRA gradients

    def __init__(
        self, adapter: FamilyAdapter, beta: float = 0.9, prior: ModelScores | None = None
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ModelError(f"EMA beta must be in [0, 1), got {beta}")
        self.adapter = adapter
        self.beta = beta
        self.prior = prior
        self.scores: ModelScores | None = None
        self.num_updates = 0

    def update(self, model: nn.Module, kept: KeptIndices) -> ModelScores:
        current = group_scores(model, self.adapter, kept, _lora_taylor_element)
        if self.scores is None and self.prior is not None:
            self.scores = rescale_prior(self.prior, current, kept)
        self.scores = current if self.scores is None else _ema(self.scores, current, self.beta)
        self.num_updates += 1
        return self.scores

    # -- GroupImportance ------------------------------------------------------------------
    def observe(self, model: nn.Module, kept: KeptIndices) -> None:
        self.update(model, kept)

    def resume(self, scores: ModelScores) -> None:
        self.scores = scores  # the device's EMA continues from earlier rounds

    def score(self, model: nn.Module, kept: KeptIndices, calibration: Calibration) -> ModelScores:
        if self.scores is None:
            raise ModelError("LoRA-Taylor importance has no scores yet: observe a step first")
        return self.scores

    @property
    def smoothed(self) -> ModelScores | None:
        return self.scores


def _ema(previous: ModelScores, current: ModelScores, beta: float) -> ModelScores:
    return tuple(
        LayerScores(
            heads=beta * old.heads + (1 - beta) * new.heads,
            kv_heads=beta * old.kv_heads + (1 - beta) * new.kv_heads,
            channels=beta * old.channels + (1 - beta) * new.channels,
        )
        for old, new in zip(previous, current, strict=True)
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    total = float(mask.sum())
    return float((values * mask).sum()) / total if total > 0 else 0.0


def rescale_prior(prior: ModelScores, reference: ModelScores, kept: KeptIndices) -> ModelScores:
    """The prior's shape at the reference's scale: per layer and kind, the prior times the ratio
    of the reference's mean to the prior's mean over the kept structures. Used to start a
    device's EMA, whose later updates are raw gradient-based scores."""
    out = []
    for p, r, masks in zip(prior, reference, kept_masks(kept), strict=True):
        parts = {}
        for kind in KINDS:
            p_vals, r_vals = getattr(p, kind).float(), getattr(r, kind).float()
            p_mean = masked_mean(p_vals, masks[kind])
            scale = masked_mean(r_vals, masks[kind]) / p_mean if p_mean > 0 else 0.0
            parts[kind] = p_vals * scale
        out.append(LayerScores(**parts))
    return tuple(out)


def taylor_importance(
    model: nn.Module,
    adapter: FamilyAdapter,
    kept: KeptIndices,
    batches: Iterable[Mapping[str, torch.Tensor]],
) -> ModelScores:
    """First-order Taylor |W_eff * dL/dW| with true gradients summed over calibration batches.

    Batches are model inputs including `labels` (the model returns the loss). Base weights of
    the prunable projections get gradients only for the duration of the call; the model is
    scored in eval mode and all gradients are cleared afterwards.
    """
    weights = _projection_weights(model, adapter)
    saved_flags = [weight.requires_grad for weight in weights]
    was_training = model.training
    model.eval()
    try:
        for weight in weights:
            weight.requires_grad_(True)
            weight.grad = None
        seen = 0
        for batch in batches:
            model(**batch).loss.backward()
            seen += 1
        if seen == 0:
            raise ModelError("taylor_importance needs at least one calibration batch")
        return group_scores(model, adapter, kept, _full_taylor_element)
    finally:
        for weight, flag in zip(weights, saved_flags, strict=True):
            weight.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


class GroupImportance(Protocol):
    """A device's importance of every head and channel group during one round."""

    # True when `score` runs its own forward and backward through the base (a calibration
    # batch with full weight gradients): the device's clock must count that pass
    calibration_backward: bool

    def observe(self, model: nn.Module, kept: KeptIndices) -> None:
        """Called after every local backward (before zero_grad)."""
        ...

    def resume(self, scores: ModelScores) -> None:
        """Continue from the device's scores of earlier rounds (no-op if nothing carries)."""
        ...

    def score(self, model: nn.Module, kept: KeptIndices, calibration: Calibration) -> ModelScores:
        """Scores for a prune step (original coordinates)."""
        ...

    @property
    def smoothed(self) -> ModelScores | None:
        """Scores worth carrying to later rounds and to the fleet prior (None: none)."""
        ...


Calibration = Callable[[], Mapping[str, torch.Tensor]]  # a labelled batch, built on demand


@dataclass
class _Stateless:
    """Importances computed afresh at each prune step from the model alone."""

    adapter: FamilyAdapter
    calibration_backward: ClassVar[bool] = False

    def observe(self, model: nn.Module, kept: KeptIndices) -> None:
        return None

    def resume(self, scores: ModelScores) -> None:
        return None

    @property
    def smoothed(self) -> ModelScores | None:
        return None


class MagnitudeImportance(_Stateless):
    def score(self, model: nn.Module, kept: KeptIndices, calibration: Calibration) -> ModelScores:
        return magnitude_importance(model, self.adapter, kept)


class CalibrationTaylorImportance(_Stateless):
    calibration_backward: ClassVar[bool] = True

    def score(self, model: nn.Module, kept: KeptIndices, calibration: Calibration) -> ModelScores:
        return taylor_importance(model, self.adapter, kept, [calibration()])


ImportanceFactory = Callable[[FamilyAdapter, float, "ModelScores | None"], GroupImportance]
IMPORTANCE: dict[str, ImportanceFactory] = {
    "lora-taylor": lambda adapter, beta, prior: LoraTaylorImportance(adapter, beta, prior),
    "magnitude": lambda adapter, beta, prior: MagnitudeImportance(adapter),
    "taylor": lambda adapter, beta, prior: CalibrationTaylorImportance(adapter),
}


def _full_taylor_element(module: nn.Module) -> torch.Tensor:
    base = module.get_base_layer() if isinstance(module, LoraLayer) else module
    return (merged_weight(module) * base.weight.grad).abs()


def _projection_weights(model: nn.Module, adapter: FamilyAdapter) -> list[nn.Parameter]:
    weights = []
    for layer in adapter.layer_modules(model):
        for path in adapter.projection_paths().values():
            module = layer.get_submodule(path)
            base = module.get_base_layer() if isinstance(module, LoraLayer) else module
            weights.append(base.weight)
    return weights
