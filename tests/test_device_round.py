"""One device's round on the real MiniLM and spam data: pruning schedule, costing, up-link."""

import pytest
import torch

from fedspine.config import load_config
from fedspine.device_round import (
    prune_points,
    round_learning_rates,
    run_device_round,
    sparsity_schedule,
)
from fedspine.evaluation import full_kept
from fedspine.protocol import DevicePlan, DeviceRecipe, Downlink
from fedspine.pruning import module_kept_indices
from fedspine.resources import build_resources

PRUNE = DeviceRecipe.PRUNE_AND_TUNE


@pytest.fixture(scope="module")
def res():
    return build_resources(load_config("smoke", overrides=["train.local_steps=6"]))


def device_round(res, device, plan, fleet_prior=None):
    """One round from the unpruned structure with a fresh (empty) down-link."""
    return run_device_round(res, device, Downlink(plan, full_kept(res), {}, {}, fleet_prior))


def test_learning_rates_decay_per_round_from_the_first():
    train = load_config("smoke", overrides=["train.lr_decay=0.5"]).train
    assert round_learning_rates(train, 1) == (train.learning_rate, train.head_learning_rate)
    lora_lr, head_lr = round_learning_rates(train, 3)
    assert lora_lr == pytest.approx(train.learning_rate / 4)
    assert head_lr == pytest.approx(train.head_learning_rate / 4)
    constant = load_config("smoke").train  # lr_decay 1.0: every round the same
    assert round_learning_rates(constant, 30) == round_learning_rates(constant, 1)


def test_prune_points_leave_recovery_steps():
    assert prune_points(20, 20) == [10]
    assert prune_points(45, 20) == [20, 40]
    assert all(p < 45 for p in prune_points(45, 20))
    assert sparsity_schedule(0.1, 0.5, 2) == pytest.approx([0.3, 0.5])


def test_pruning_round_reaches_target_and_uplinks_in_kept_coordinates(res):
    device = res.fleet[0]
    plan = DevicePlan(round_num=1, lora_rank=4, target_sparsity=0.5, recipe=PRUNE, local_steps=6)
    result = device_round(res, device, plan)
    up, report = result.uplink, result.uplink.report
    assert report.ok and report.sparsity == pytest.approx(0.5, abs=0.02)
    assert report.time_s > 0 and report.bytes_up > 0
    assert result.carried_scores is not None  # the importance EMA the node keeps
    assert up.scores is result.carried_scores  # ... and uploads for the fleet prior
    # aggregation weight = local dataset size (FedAvg's n_k), not the examples processed
    assert report.num_examples == len(res.partitions[device.device_id])
    assert report.examples_processed == 6 * res.config.train.batch_size
    per_module = module_kept_indices(res.base.adapter, up.kept)
    for name, (rows, cols) in per_module.items():
        factors = up.factors[name]
        assert factors.A.shape[0] == factors.B.shape[1] == 4
        if rows is not None:
            assert factors.B.shape[0] == len(rows)
        if cols is not None:
            assert factors.A.shape[1] == len(cols)


def test_pruned_device_does_less_work_than_unpruned(res):
    device = res.fleet[0]
    full = device_round(res, device, DevicePlan(1, 4, 0.0, PRUNE, local_steps=6)).uplink
    pruned = device_round(res, device, DevicePlan(1, 4, 0.5, PRUNE, local_steps=6)).uplink
    assert pruned.report.train_flops < 0.9 * full.report.train_flops
    assert full.report.sparsity == 0.0


def test_a_calibration_importance_pays_for_its_own_backward_passes(res):
    """`pruning.importance=taylor` runs a calibration forward and backward (base gradients
    included) at every prune step; the device's FLOPs, hence its clock, must include them.
    MiniLM has no kv groups, so both importances give every layer the same widths and the
    rounds' step FLOPs are equal: the difference is the calibration passes alone."""
    import dataclasses

    from fedspine.fleet.cost import training_flops

    plan = DevicePlan(1, 4, 0.5, PRUNE, local_steps=6)
    taylor_cfg = dataclasses.replace(
        res.config, pruning=dataclasses.replace(res.config.pruning, importance="taylor")
    )
    lora = device_round(res, res.fleet[0], plan).uplink.report
    taylor = device_round(dataclasses.replace(res, config=taylor_cfg), res.fleet[0], plan)
    taylor = taylor.uplink.report
    assert taylor.sparsity == pytest.approx(lora.sparsity)
    points = len(prune_points(6, res.config.pruning.prune_interval))
    batch = min(len(res.partitions[res.fleet[0].device_id]), 4 * res.config.train.batch_size)
    full_pass = training_flops(res.base.model, batch, res.config.data.max_seq_len, False)  # no LoRA
    extra = taylor.train_flops - lora.train_flops
    # the first pass is at the unpruned width; each pass adds LoRA's small share on top
    assert full_pass <= extra <= 1.1 * points * full_pass


def test_the_recipe_decides_what_the_device_does_with_its_target(res):
    one_shot = DevicePlan(1, 8, 0.5, DeviceRecipe.ONE_SHOT_PRUNE, local_steps=6)
    result = device_round(res, res.fleet[1], one_shot).uplink
    assert result.report.sparsity == pytest.approx(0.5, abs=0.02)
    assert result.scores is None  # one-shot Taylor scores are not an EMA to share
    untouched = device_round(res, res.fleet[1], DevicePlan(1, 8, 0.5, local_steps=6)).uplink
    assert untouched.report.sparsity == 0.0  # recipe none: a target alone prunes nothing
    self_pruned = DevicePlan(1, 8, 0.0, DeviceRecipe.RANK_SELF_PRUNE, local_steps=6)
    result = device_round(res, res.fleet[1], self_pruned).uplink
    assert 1 <= result.report.lora_rank <= 8
    assert all(f.A.shape[0] == result.report.lora_rank for f in result.factors.values())


def test_fleet_prior_steers_the_devices_pruning_and_is_costed(res):
    """A device starting from a fleet prior keeps what the prior ranks high (a few local steps
    refine it, they do not overturn it), and the prior and its own scores travel as bytes."""
    from fedspine.protocol import payload_bytes
    from fedspine.pruning import LayerScores
    from fedspine.pruning.fleet_importance import scores_to_tensors

    dims = full_kept(res).dims
    channels = [100.0 if c % 2 == 0 else 0.01 for c in range(dims.intermediate_size)]
    heads = [float(dims.num_heads - h) for h in range(dims.num_heads)]  # head 0 first
    layer = LayerScores(
        heads=torch.tensor(heads),
        kv_heads=torch.tensor(heads),
        channels=torch.tensor(channels),
    )
    prior = (layer,) * dims.num_layers
    plan = DevicePlan(round_num=2, lora_rank=4, target_sparsity=0.5, recipe=PRUNE, local_steps=6)
    steered = device_round(res, res.fleet[2], plan, fleet_prior=prior).uplink
    local = device_round(res, res.fleet[2], plan).uplink

    def favoured_share(result) -> float:
        kept = [c for layer in result.kept.layers for c in layer.channels]
        return sum(c % 2 == 0 for c in kept) / len(kept)

    assert favoured_share(steered) >= 0.75  # measured ~0.83: mostly the prior's choice
    assert favoured_share(local) <= 0.65  # ~0.5 without it
    top_heads = set(range(dims.num_heads // 2))
    assert sum(len(top_heads & set(k.heads)) for k in steered.kept.layers) >= 0.75 * 6 * 6
    assert steered.scores is not None and local.scores is not None
    prior_bytes = payload_bytes(scores_to_tensors(prior))
    assert steered.report.bytes_down == local.report.bytes_down + prior_bytes


def test_scoring_leaves_the_shared_base_untouched(res):
    """An evaluated device model shares the base's unpruned weights (they are not copied), so
    scoring must never write into them: a merged LoRA would corrupt every later model."""
    from fedspine.evaluation import evaluate_device
    from fedspine.methods.registry import get_method
    from fedspine.server.run import make_server

    server = make_server(res, get_method("fedspine"))
    generator = torch.Generator().manual_seed(0)
    for factors in server.global_lora.factors.values():  # a non-zero LoRA delta
        factors.B.copy_(torch.randn(factors.B.shape, generator=generator) * 0.05)
    before = {n: p.detach().clone() for n, p in res.base.model.named_parameters()}
    evaluate_device(res, server.global_lora, full_kept(res), res.test.subset(list(range(8))))
    after = dict(res.base.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
