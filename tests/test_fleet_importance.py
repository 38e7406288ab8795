"""Fleet-wide importance pooling: normalisation, masked weighted means, priors, and why it helps."""

import pytest
import torch

from fedspine.models.families import FullDims
from fedspine.pruning import KeptIndices, LayerKept, LayerScores, select_groups_to_keep
from fedspine.pruning.fleet_importance import (
    ScoreReport,
    normalise_scores,
    pool_scores,
    scores_to_tensors,
    tensors_to_scores,
)
from fedspine.pruning.importance import KINDS, LoraTaylorImportance, _ema, rescale_prior
from fedspine.pruning.kept import kept_masks

torch.set_num_threads(1)
DIMS = FullDims(
    num_layers=2, num_heads=4, num_kv_heads=4, head_dim=2, intermediate_size=8, hidden_size=8
)


def _kept(heads=(0, 1, 2, 3), channels=tuple(range(8))) -> KeptIndices:
    layer = LayerKept(tuple(heads), tuple(heads), tuple(channels))
    return KeptIndices("test", DIMS, (layer,) * DIMS.num_layers)


def _scores(values_heads, values_channels) -> tuple:
    layer = LayerScores(
        heads=torch.tensor(values_heads, dtype=torch.float),
        kv_heads=torch.tensor(values_heads, dtype=torch.float),
        channels=torch.tensor(values_channels, dtype=torch.float),
    )
    return (layer,) * DIMS.num_layers


def test_normalised_scores_have_mean_one_over_kept_structures():
    kept = _kept(heads=(0, 2, 3), channels=(1, 2, 5))
    scores = _scores([2.0, 100.0, 4.0, 6.0], [9.0, 1.0, 2.0, 9.0, 9.0, 3.0, 9.0, 9.0])
    out = normalise_scores(scores, kept)
    for layer, masks in zip(out, kept_masks(kept), strict=True):
        for kind in KINDS:
            values, mask = getattr(layer, kind), masks[kind]
            assert float((values * mask).sum() / mask.sum()) == pytest.approx(1.0)
    assert out[0].heads.tolist() == pytest.approx([0.5, 25.0, 1.0, 1.5])


def test_pooling_is_scale_free_and_example_weighted():
    kept = _kept()
    a = _scores([1.0, 2.0, 3.0, 2.0], [1.0] * 8)
    b = _scores([300.0, 100.0, 100.0, 300.0], [1.0] * 8)  # other scale, other shape
    pooled = pool_scores(None, [ScoreReport(a, kept, 3.0), ScoreReport(b, kept, 1.0)], 0.5)
    expect = 0.75 * torch.tensor([0.5, 1.0, 1.5, 1.0]) + 0.25 * torch.tensor([1.5, 0.5, 0.5, 1.5])
    assert torch.allclose(pooled[0].heads, expect)
    assert torch.allclose(pooled[1].channels, torch.ones(8))


def test_a_structure_scored_by_one_device_takes_its_value_and_unscored_keep_the_prior():
    full, pruned = _kept(), _kept(heads=(0, 1), channels=(0, 1, 2, 3))
    a = _scores([1.0, 1.0, 4.0, 2.0], [1.0] * 8)  # kept everything
    b = _scores([5.0, 5.0, 0.0, 0.0], [2.0] * 8)  # had only heads 0, 1 at round start
    pooled = pool_scores(None, [ScoreReport(a, full, 1.0), ScoreReport(b, pruned, 1.0)], 0.0)
    a_norm = normalise_scores(a, full)[0].heads
    assert pooled[0].heads[2] == pytest.approx(float(a_norm[2]))  # only device a had head 2
    assert pooled[0].heads[0] == pytest.approx((float(a_norm[0]) + 1.0) / 2)
    previous = pooled
    later = pool_scores(previous, [ScoreReport(b, pruned, 1.0)], 0.5)
    assert later[0].heads[3] == pytest.approx(float(previous[0].heads[3]))  # nobody scored it
    assert later[0].heads[0] == pytest.approx(0.5 * float(previous[0].heads[0]) + 0.5)


def test_no_reports_leave_the_prior_unchanged():
    prior = _scores([1.0, 2.0, 3.0, 4.0], [1.0] * 8)
    assert pool_scores(prior, [], 0.5) is prior
    assert pool_scores(None, [], 0.5) is None


def test_rescaled_prior_keeps_its_ranking_at_the_reference_scale():
    kept = _kept(heads=(0, 1, 3))
    prior = _scores([1.0, 3.0, 50.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    reference = _scores([0.01, 0.02, 0.0, 0.03], [0.004] * 8)
    out = rescale_prior(prior, reference, kept)
    mask = kept_masks(kept)[0]["heads"]
    assert float((out[0].heads * mask).sum()) == pytest.approx(0.06)
    assert torch.argsort(out[0].channels).tolist() == torch.argsort(prior[0].channels).tolist()


def test_lora_taylor_ema_starts_from_the_rescaled_prior(monkeypatch):
    kept = _kept()
    prior = _scores([4.0, 3.0, 2.0, 1.0], [1.0] * 8)
    current = _scores([0.1, 0.2, 0.3, 0.4], [0.5] * 8)
    monkeypatch.setattr("fedspine.pruning.importance.group_scores", lambda *args, **kwargs: current)
    importance = LoraTaylorImportance(adapter=None, beta=0.9, prior=prior)
    got = importance.update(model=None, kept=kept)
    expect = _ema(rescale_prior(prior, current, kept), current, 0.9)
    assert torch.allclose(got[0].heads, expect[0].heads)
    assert got[0].heads[0] > got[0].heads[3]  # the prior's ranking dominates one noisy step
    plain = LoraTaylorImportance(adapter=None, beta=0.9)
    assert torch.allclose(plain.update(model=None, kept=kept)[0].heads, current[0].heads)


def test_scores_round_trip_through_flat_tensors():
    scores = _scores([1.0, 2.0, 3.0, 4.0], list(range(8)))
    back = tensors_to_scores(scores_to_tensors(scores))
    for old, new in zip(scores, back, strict=True):
        for kind in KINDS:
            assert torch.equal(getattr(old, kind), getattr(new, kind))
    assert tensors_to_scores({}) is None


def test_pooled_noisy_scores_pick_the_truly_important_channels_better_than_one_device():
    """Why pooling: 12 devices each see the true channel importance through heavy noise; the
    pooled prior keeps far more of the truly top half than any single device's scores."""
    dims = FullDims(
        num_layers=1, num_heads=4, num_kv_heads=4, head_dim=2, intermediate_size=64, hidden_size=8
    )
    layer = LayerKept((0, 1, 2, 3), (0, 1, 2, 3), tuple(range(64)))
    kept = KeptIndices("test", dims, (layer,))
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(64, generator=gen) + 0.1
    true_top = set(torch.topk(truth, 32).indices.tolist())

    def noisy(scale: float):
        noise = torch.exp(torch.randn(64, generator=gen))  # multiplicative, heavy-tailed
        channels = scale * truth * noise
        heads = torch.ones(4)
        return (LayerScores(heads=heads, kv_heads=heads, channels=channels),)

    reports = [ScoreReport(noisy(10.0**i), kept, 1.0) for i in range(-6, 6)]
    pooled = pool_scores(None, reports, 0.0)

    def overlap(scores) -> int:
        chosen = select_groups_to_keep(scores, kept, 0.5)
        return len(true_top & set(chosen.layers[0].channels))

    single = [overlap(r.scores) for r in reports]
    assert overlap(pooled) > max(single)
    assert overlap(pooled) >= 25  # single devices: 19-24 of 32 here
