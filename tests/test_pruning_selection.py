"""Selection of the groups to keep: counts, lowest scores removed, floors, GQA rule, modes."""

import pytest
import torch

from fedspine.errors import ConfigError
from fedspine.models.families import FullDims
from fedspine.pruning import KeptIndices, LayerKept, LayerScores, select_groups_to_keep

torch.set_num_threads(1)
MHA = FullDims(
    num_layers=3, num_heads=8, num_kv_heads=8, head_dim=4, intermediate_size=16, hidden_size=32
)
GQA = FullDims(
    num_layers=2, num_heads=8, num_kv_heads=2, head_dim=4, intermediate_size=16, hidden_size=32
)


def _full(dims: FullDims) -> KeptIndices:
    layer = LayerKept(
        tuple(range(dims.num_heads)),
        tuple(range(dims.num_kv_heads)),
        tuple(range(dims.intermediate_size)),
    )
    return KeptIndices("test", dims, (layer,) * dims.num_layers)


def _random_scores(dims: FullDims, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        LayerScores(
            heads=torch.rand(dims.num_heads, generator=generator),
            kv_heads=torch.zeros(dims.num_kv_heads),
            channels=torch.rand(dims.intermediate_size, generator=generator),
        )
        for _ in range(dims.num_layers)
    )


def test_uniform_keeps_the_highest_scoring_share_in_every_layer():
    scores = _random_scores(MHA)
    kept = select_groups_to_keep(scores, _full(MHA), 0.5)
    for layer_scores, layer in zip(scores, kept.layers, strict=True):
        assert len(layer.heads) == 4 and len(layer.channels) == 8
        top_heads = torch.topk(layer_scores.heads, 4).indices.sort().values.tolist()
        assert list(layer.heads) == top_heads
        assert min(layer_scores.channels[list(layer.channels)]) > max(
            layer_scores.channels[[c for c in range(16) if c not in layer.channels]]
        )
    assert kept.is_uniform


def test_selection_is_monotone():
    first = select_groups_to_keep(_random_scores(MHA, 0), _full(MHA), 0.25)
    # fresh scores that would prefer other heads: only already kept ones can stay
    second = select_groups_to_keep(_random_scores(MHA, 1), first, 0.5)
    for before, after in zip(first.layers, second.layers, strict=True):
        assert set(after.heads) <= set(before.heads)
        assert set(after.channels) <= set(before.channels)
    # a lower target than reached changes nothing
    assert select_groups_to_keep(_random_scores(MHA, 2), second, 0.1) == second


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_floor_keeps_one_head_and_one_channel_per_layer(mode):
    kept = select_groups_to_keep(_random_scores(MHA), _full(MHA), 0.99, mode)
    assert all(len(k.heads) == 1 and len(k.channels) == 1 for k in kept.layers)


def test_gqa_keeps_equal_query_heads_per_kept_kv_group():
    scores = _random_scores(GQA)
    for ratio in (0.25, 0.5, 0.6, 0.9):
        kept = select_groups_to_keep(scores, _full(GQA), ratio)  # KeptIndices validates the rule
        target = round(8 * (1 - ratio))
        assert all(len(k.heads) <= target for k in kept.layers)


def test_gqa_picks_the_better_of_whole_groups_or_thinner_groups():
    # group 0 = heads 0-3 strong; group 1 = heads 4-7 weak; keep 4 of 8 query heads
    heads = torch.tensor([5.0, 5.0, 5.0, 5.0, 1.0, 1.0, 0.0, 0.0])
    strong_group = LayerScores(heads, torch.tensor([1.0, 1.0]), torch.ones(16))
    kept = select_groups_to_keep((strong_group,) * 2, _full(GQA), 0.5)
    assert kept.layers[0].heads == (0, 1, 2, 3) and kept.layers[0].kv_heads == (0,)
    # a heavy kv head 1 makes two groups of two worth more than one group of four
    heavy_kv = LayerScores(heads, torch.tensor([1.0, 50.0]), torch.ones(16))
    kept = select_groups_to_keep((heavy_kv,) * 2, _full(GQA), 0.5)
    assert kept.layers[0].heads == (0, 1, 4, 5) and kept.layers[0].kv_heads == (0, 1)


def test_global_mode_prunes_more_where_importance_is_concentrated():
    concentrated = torch.tensor([100.0] + [1.0] * 15)
    flat = torch.ones(16)
    scores = (
        LayerScores(torch.ones(8), torch.zeros(8), concentrated),
        LayerScores(torch.ones(8), torch.zeros(8), flat + torch.rand(16) * 1e-3),
        LayerScores(torch.ones(8), torch.zeros(8), flat + torch.rand(16) * 1e-3),
    )
    kept = select_groups_to_keep(scores, _full(MHA), 0.5, mode="global")
    widths = [len(k.channels) for k in kept.layers]
    assert sum(widths) == round(16 * 3 * 0.5)
    assert widths[0] < widths[1] and widths[0] < widths[2]
    assert 0 in kept.layers[0].channels


@pytest.mark.parametrize(("ratio", "mode"), [(1.0, "uniform"), (-0.1, "uniform"), (0.5, "random")])
def test_bad_arguments_raise_config_error(ratio, mode):
    with pytest.raises(ConfigError):
        select_groups_to_keep(_random_scores(MHA), _full(MHA), ratio, mode)


SMOL = FullDims(
    num_layers=2, num_heads=9, num_kv_heads=3, head_dim=4, intermediate_size=60, hidden_size=36
)


def _structure_share(kept: KeptIndices) -> tuple[float, float]:
    dims = kept.dims
    heads = 1 - sum(len(k.heads) for k in kept.layers) / (dims.num_heads * dims.num_layers)
    channels = 1 - sum(len(k.channels) for k in kept.layers) / (
        dims.intermediate_size * dims.num_layers
    )
    return heads, channels


@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize(
    ("ratio", "heads_removed"), [(0.1, 0.0), (0.3, 1 / 3), (0.5, 5 / 9), (0.7, 2 / 3)]
)
def test_coarse_gqa_heads_are_balanced_by_channels_to_hit_the_target(mode, ratio, heads_removed):
    # 9 query heads in 3 kv groups allow 9, 6, 4, 3, 2 or 1 heads: never 8 (a 10% target)
    kept = select_groups_to_keep(_random_scores(SMOL, 3), _full(SMOL), ratio, mode)
    heads, channels = _structure_share(kept)
    if mode == "uniform":  # global mode spreads the heads unevenly; the mean still holds
        assert heads == pytest.approx(heads_removed)
    assert ratio - 1e-9 <= (heads + channels) / 2 <= ratio + 1 / 60  # never under the target


def test_mha_heads_and_channels_keep_the_same_share():
    kept = select_groups_to_keep(_random_scores(MHA), _full(MHA), 0.25)
    assert _structure_share(kept) == (0.25, 0.25)
