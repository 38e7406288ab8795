"""LoRA aggregation across ranks and widths, and the down-link: equivalences and invariants."""

import pytest
import torch

from fedspine.lora import (
    AGGREGATORS,
    LoraFactors,
    LoraUpload,
    aggregate_masked_svd,
    aggregate_zero_pad,
    average_tensors,
    fedavg_factors,
    make_aggregator,
    restrict_and_truncate,
    slice_factors,
    to_full_delta,
)
from fedspine.lora.aggregation import step_toward

torch.set_num_threads(1)
DT = torch.float64
SHAPES = {"q": (12, 10), "down": (10, 16)}
S = 4.0  # the run's one peft scaling (lora_alpha = alpha_per_rank * r)


def random_factors(rank, out_features, in_features, seed):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(
        A=torch.randn(rank, in_features, generator=g, dtype=DT),
        B=torch.randn(out_features, rank, generator=g, dtype=DT),
    )


def unpruned_update(rank, seed, examples):
    factors = {
        name: random_factors(rank, o, i, seed + k)
        for k, (name, (o, i)) in enumerate(SHAPES.items())
    }
    return LoraUpload(factors=factors, rows={}, cols={}, num_examples=examples)


def pruned_update(name, rows, cols, rank, seed, examples):
    factors = {name: random_factors(rank, len(rows), len(cols), seed)}
    return LoraUpload(factors=factors, rows={name: rows}, cols={name: cols}, num_examples=examples)


def test_masked_svd_equals_weighted_mean_of_deltas_without_pruning():
    updates = [unpruned_update(4, 0, 10), unpruned_update(4, 10, 30), unpruned_update(4, 20, 60)]
    result = aggregate_masked_svd(updates, SHAPES, max_rank=12, scaling=S)
    for name in SHAPES:
        expected = sum(u.num_examples * u.factors[name].delta(S) for u in updates) / 100
        assert result[name].rank == 12
        torch.testing.assert_close(result[name].delta(), expected, rtol=1e-10, atol=1e-10)


def test_different_ranks_are_combined_exactly_when_max_rank_suffices():
    updates = [unpruned_update(2, 0, 5), unpruned_update(8, 7, 5)]
    result = aggregate_masked_svd(updates, SHAPES, max_rank=10, scaling=S)
    for name in SHAPES:
        expected = (updates[0].factors[name].delta(S) + updates[1].factors[name].delta(S)) / 2
        torch.testing.assert_close(result[name].delta(), expected, rtol=1e-10, atol=1e-10)


def test_coordinate_kept_by_one_device_is_not_diluted():
    full = SHAPES["down"]
    wide = pruned_update("down", torch.arange(10), torch.arange(16), 3, seed=1, examples=50)
    narrow = pruned_update("down", torch.tensor([0, 2, 4]), torch.arange(8), 3, 2, examples=50)
    result = aggregate_masked_svd([wide, narrow], {"down": full}, 10, 2.0)["down"].delta()
    wide_delta, _ = to_full_delta(wide, "down", full, 2.0)
    narrow_delta, narrow_mask = to_full_delta(narrow, "down", full, 2.0)
    only_wide = ~narrow_mask
    torch.testing.assert_close(result[only_wide], wide_delta[only_wide])
    both = narrow_mask
    torch.testing.assert_close(result[both], (wide_delta[both] + narrow_delta[both]) / 2)


def test_uncovered_coordinates_keep_the_previous_global_value():
    full = SHAPES["q"]
    previous = {"q": random_factors(10, *full, seed=5)}
    update = pruned_update("q", torch.arange(6), torch.arange(10), 2, seed=3, examples=1)
    result = aggregate_masked_svd([update], {"q": full}, 10, 2.0, previous=previous)
    merged = result["q"].delta()
    torch.testing.assert_close(merged[6:], previous["q"].delta()[6:])
    torch.testing.assert_close(merged[:6], update.factors["q"].delta(2.0))
    without_previous = aggregate_masked_svd([update], {"q": full}, 10, 2.0)["q"].delta()
    assert torch.count_nonzero(without_previous[6:].abs() > 1e-12) == 0


def test_masked_svd_truncation_is_the_best_low_rank_approximation():
    updates = [unpruned_update(4, 0, 1), unpruned_update(4, 9, 1)]
    exact = aggregate_masked_svd(updates, SHAPES, max_rank=10, scaling=S)["q"].delta()
    truncated = aggregate_masked_svd(updates, SHAPES, max_rank=3, scaling=S)["q"].delta()
    U, sv, Vh = torch.linalg.svd(exact)
    torch.testing.assert_close(truncated, U[:, :3] @ torch.diag(sv[:3]) @ Vh[:3])


def test_zero_pad_with_equal_ranks_equals_fedavg_of_factors():
    updates = [unpruned_update(4, 0, 10), unpruned_update(4, 10, 30)]
    padded = aggregate_zero_pad(updates, SHAPES, max_rank=4)
    folded = aggregate_zero_pad(updates, SHAPES, max_rank=4, scaling=S)
    averaged = fedavg_factors(updates)
    for name in SHAPES:
        torch.testing.assert_close(padded[name].A, averaged[name].A)
        torch.testing.assert_close(padded[name].B, averaged[name].B)
        plain_a = (10 * updates[0].factors[name].A + 30 * updates[1].factors[name].A) / 40
        torch.testing.assert_close(averaged[name].A, plain_a)
        torch.testing.assert_close(folded[name].A, S**0.5 * plain_a)  # sqrt(s) in each factor


def test_zero_pad_dilutes_pruned_coordinates_and_pads_ranks():
    full = SHAPES["down"]
    wide = pruned_update("down", torch.arange(10), torch.arange(16), 4, seed=1, examples=1)
    narrow = pruned_update("down", torch.arange(5), torch.arange(16), 2, seed=2, examples=1)
    result = aggregate_zero_pad([wide, narrow], {"down": full}, max_rank=8, scaling=2.0)["down"]
    assert result.A.shape == (8, 16) and result.B.shape == (10, 8)
    assert torch.all(result.A[4:] == 0) and torch.all(result.B[:, 4:] == 0)
    torch.testing.assert_close(result.B[5:, :4], 2.0**0.5 * wide.factors["down"].B[5:] / 2)


def test_fedavg_rejects_mismatched_updates():
    with pytest.raises(ValueError):
        fedavg_factors([unpruned_update(4, 0, 1), unpruned_update(8, 1, 1)])
    pruned = pruned_update("q", torch.arange(12), torch.arange(10), 4, seed=0, examples=1)
    with pytest.raises(ValueError):
        fedavg_factors([pruned, pruned])


def test_restrict_and_truncate_is_exact_or_best_rank_r():
    global_factors = {"q": random_factors(4, *SHAPES["q"], seed=11)}
    rows, cols = {"q": torch.tensor([0, 3, 4, 7, 9, 11])}, {"q": torch.arange(2, 9)}
    target = global_factors["q"].delta()[rows["q"]][:, cols["q"]]
    exact = restrict_and_truncate(global_factors, rows, cols, rank=8, scaling=2.0)["q"]
    assert exact.A.shape == (8, 7) and exact.B.shape == (6, 8)
    torch.testing.assert_close(exact.delta(2.0), target)
    low = restrict_and_truncate(global_factors, rows, cols, rank=2, scaling=0.5)["q"]
    U, S, Vh = torch.linalg.svd(target)
    torch.testing.assert_close(low.delta(0.5), U[:, :2] @ torch.diag(S[:2]) @ Vh[:2])
    # singular values split evenly: B and A carry the same energy per component
    torch.testing.assert_close(low.B.norm(dim=0), low.A.norm(dim=1))


def test_zero_delta_gives_peft_like_init_and_null_components_stay_trainable():
    zero = {"q": LoraFactors(A=torch.zeros(8, 10), B=torch.zeros(12, 8))}
    fresh = restrict_and_truncate(zero, {}, {}, rank=4, scaling=2.0, seed=3)["q"]
    assert torch.all(fresh.B == 0) and torch.isfinite(fresh.A).all()
    assert torch.all(fresh.A.abs().sum(dim=1) > 0)
    assert fresh.A.abs().max() <= 1 / 10**0.5
    again = restrict_and_truncate(zero, {}, {}, rank=4, scaling=2.0, seed=3)["q"]
    torch.testing.assert_close(again.A, fresh.A)  # seeded: every device gets the same A
    rank_two = {"q": random_factors(2, 12, 10, seed=4)}
    padded = restrict_and_truncate(rank_two, {}, {}, rank=6, scaling=1.0)["q"]
    assert torch.all(padded.B[:, 2:] == 0) and torch.all(padded.A[2:].abs().sum(dim=1) > 0)
    torch.testing.assert_close(padded.delta(), rank_two["q"].delta())


def test_round_trip_down_link_then_aggregate_keeps_the_global_delta():
    global_factors = aggregate_masked_svd([unpruned_update(4, 0, 1)], SHAPES, 8, S)
    downs = [restrict_and_truncate(global_factors, {}, {}, rank=r, scaling=S) for r in (4, 8)]
    ups = [LoraUpload(factors=f, rows={}, cols={}, num_examples=3) for f in downs]
    merged = aggregate_masked_svd(ups, SHAPES, max_rank=8, scaling=S)
    for name in SHAPES:
        torch.testing.assert_close(merged[name].delta(), global_factors[name].delta())


def test_slice_factors_takes_leading_components_at_kept_coordinates():
    update = unpruned_update(4, 0, 1)
    global_factors = aggregate_zero_pad([update], SHAPES, max_rank=8)
    down = slice_factors(global_factors, {}, {}, rank=4)
    for name in SHAPES:
        torch.testing.assert_close(down[name].A, update.factors[name].A)
        torch.testing.assert_close(down[name].B, update.factors[name].B)
    rows = {"q": torch.tensor([1, 2])}
    sliced = slice_factors(global_factors, rows, {}, rank=2)["q"]
    torch.testing.assert_close(sliced.B, update.factors["q"].B[[1, 2], :2])
    sliced.B.add_(1.0)  # a copy: training the down-link never writes into the global
    torch.testing.assert_close(global_factors["q"].B[[1, 2], :2], update.factors["q"].B[[1, 2], :2])


def test_each_rule_is_one_registered_class_with_downlink_and_aggregate():
    assert set(AGGREGATORS) == {
        "fedavg",
        "zero-pad",
        "sparsity-weighted",
        "masked-svd",
        "masked-svd-residual",
        "stacking",
        "shared-a",
    }
    factors = {n: random_factors(4, o, i, 30 + k) for k, (n, (o, i)) in enumerate(SHAPES.items())}
    updates = [unpruned_update(4, 0, 10), unpruned_update(4, 10, 30)]
    for name in AGGREGATORS:
        rule = make_aggregator(name)
        down = rule.downlink(factors, S, {}, {}, 4)
        a_only = rule.shares_only_a  # FedSA-LoRA: B never travels
        assert {n: (None if a_only else f.B.shape, f.A.shape) for n, f in down.items()} == {
            n: (None if a_only else (o, 4), (4, i)) for n, (o, i) in SHAPES.items()
        }
        if a_only:
            updates_of_rule = [
                LoraUpload({n: LoraFactors(f.A, None) for n, f in u.factors.items()}, {}, {}, 1)
                for u in updates
            ]
            assert all(
                f.rank == 4 for f in rule.aggregate(factors, S, 4, updates_of_rule, 1.0).values()
            )
            continue
        merged = rule.aggregate(factors, S, 4, updates, 1.0)
        assert all(f.rank == 4 for f in merged.values())
    # factor averaging keeps the uploads' convention; masked SVD averages the deltas
    fedavg = make_aggregator("fedavg").aggregate(factors, S, 4, updates, 1.0)
    torch.testing.assert_close(fedavg["q"].A, fedavg_factors(updates)["q"].A)
    svd = make_aggregator("masked-svd").aggregate(factors, S, 8, updates, 1.0)
    expected = (10 * updates[0].factors["q"].delta(S) + 30 * updates[1].factors["q"].delta(S)) / 40
    torch.testing.assert_close(svd["q"].delta(S), expected, rtol=1e-9, atol=1e-9)


def test_average_tensors():
    heads = [torch.full((2, 3), 1.0), torch.full((2, 3), 4.0)]
    torch.testing.assert_close(average_tensors(heads, [2.0, 1.0]), torch.full((2, 3), 2.0))
    torch.testing.assert_close(average_tensors(heads, [0.0, 0.0]), torch.full((2, 3), 2.5))
    with pytest.raises(ValueError):
        average_tensors(heads, [1.0])


def test_shape_errors_are_reported():
    bad = LoraUpload(
        factors={"q": random_factors(2, 5, 10, 0)},
        rows={"q": torch.arange(6)},
        cols={},
        num_examples=1,
    )
    with pytest.raises(ValueError, match="kept rows"):
        aggregate_masked_svd([bad], {"q": SHAPES["q"]}, max_rank=4, scaling=1.0)
    with pytest.raises(ValueError, match="no full shape"):
        aggregate_masked_svd([unpruned_update(2, 0, 1)], {"q": SHAPES["q"]}, 4, 1.0)


def _random_global(rank, seed):
    return {n: random_factors(rank, o, i, seed + k) for k, (n, (o, i)) in enumerate(SHAPES.items())}


def _low_rank_round(global_factors, rank, progress_seed, scaling=2.0, rows=None, cols=None):
    """A device receives the global at `rank` on its kept coordinates and adds some progress."""
    rows = rows or {}
    cols = cols or {}
    received = restrict_and_truncate(global_factors, rows, cols, rank, scaling)
    trained = {}
    for k, (name, f) in enumerate(received.items()):
        step = random_factors(rank, f.B.shape[0], f.A.shape[1], progress_seed + k)
        trained[name] = LoraFactors(A=f.A + 0.1 * step.A, B=f.B + 0.1 * step.B)
    update = LoraUpload(
        trained, rows, cols, 10, received=received, received_rows=rows, received_cols=cols
    )
    return received, update


def test_residual_aggregation_keeps_what_the_low_rank_down_link_left_out():
    global_factors = {
        n: random_factors(6, o, i, 40 + k) for k, (n, (o, i)) in enumerate(SHAPES.items())
    }
    received, update = _low_rank_round(global_factors, rank=2, progress_seed=7)
    plain = aggregate_masked_svd([update], SHAPES, 12, 2.0, previous=global_factors)
    kept = aggregate_masked_svd(
        [update], SHAPES, 12, 2.0, previous=global_factors, keep_residual=True
    )
    for name in SHAPES:
        progress = update.factors[name].delta(2.0) - received[name].delta(2.0)
        expected = global_factors[name].delta() + progress  # the global moved by what was learned
        torch.testing.assert_close(kept[name].delta(), expected, rtol=1e-9, atol=1e-9)
        # the plain mean replaces the global by the device's rank-2 state: the residual is lost
        lost = global_factors[name].delta() - received[name].delta(2.0)
        torch.testing.assert_close(plain[name].delta(), expected - lost, rtol=1e-9, atol=1e-9)
        assert lost.norm() > 0.1 * global_factors[name].delta().norm()


def test_residual_aggregation_equals_plain_when_the_down_link_is_exact():
    global_factors = {
        n: random_factors(3, o, i, 60 + k) for k, (n, (o, i)) in enumerate(SHAPES.items())
    }
    _, first = _low_rank_round(global_factors, rank=3, progress_seed=1)
    _, second = _low_rank_round(global_factors, rank=4, progress_seed=2)
    plain = aggregate_masked_svd([first, second], SHAPES, 12, 2.0, previous=global_factors)
    kept = aggregate_masked_svd(
        [first, second], SHAPES, 12, 2.0, previous=global_factors, keep_residual=True
    )
    for name in SHAPES:
        torch.testing.assert_close(kept[name].delta(), plain[name].delta(), rtol=1e-9, atol=1e-9)


def test_residual_aggregation_on_pruned_coordinates_touches_only_what_the_device_kept():
    global_factors = {
        n: random_factors(6, o, i, 80 + k) for k, (n, (o, i)) in enumerate(SHAPES.items())
    }
    rows = {"q": torch.tensor([0, 2, 5, 7, 11])}
    cols = {"down": torch.tensor([1, 3, 4, 8, 9, 12, 15])}
    received, update = _low_rank_round(global_factors, 2, 3, rows=rows, cols=cols)
    kept = aggregate_masked_svd(
        [update], SHAPES, 12, 2.0, previous=global_factors, keep_residual=True
    )
    for name in SHAPES:
        delta, mask = to_full_delta(update, name, SHAPES[name], 2.0)
        sent, _ = to_full_delta(LoraUpload(received, rows, cols, 0), name, SHAPES[name], 2.0)
        expected = global_factors[name].delta() + mask * (delta - sent)
        torch.testing.assert_close(kept[name].delta(), expected, rtol=1e-9, atol=1e-9)


def test_step_toward_is_the_convex_move_and_exact_at_one():
    previous, target = torch.zeros(3), torch.tensor([2.0, -4.0, 8.0])
    assert torch.equal(step_toward(previous, target, 1.0), target)
    assert torch.allclose(step_toward(previous, target, 0.25), torch.tensor([0.5, -1.0, 2.0]))
    assert torch.allclose(step_toward(target, target, 0.3), target)


def _dense_reference_mean(updates, previous, scaling, keep_residual):
    """The definition, one device and one full-size matrix at a time: each coordinate's
    example-weighted mean over the devices that kept it (with the residual rule, a device's
    value there is its delta plus, where it also received, previous minus what it received)."""
    out = {}
    for name, shape in SHAPES.items():
        prev = previous[name].delta()
        total, cover = torch.zeros(shape, dtype=DT), torch.zeros(shape, dtype=DT)
        for update in updates:
            if name not in update.factors:
                continue
            delta, mask = to_full_delta(update, name, shape, scaling)
            value = delta
            if keep_residual and update.received and name in update.received:
                sent_update = LoraUpload(
                    update.received, update.received_rows, update.received_cols, 0
                )
                sent, sent_mask = to_full_delta(sent_update, name, shape, scaling)
                value = delta + mask * sent_mask * (prev - sent)
            total += update.num_examples * mask * value
            cover += update.num_examples * mask
        out[name] = torch.where(cover > 0, total / cover.clamp_min(1e-30), prev)
    return out


@pytest.mark.parametrize("keep_residual", [False, True])
def test_masked_mean_of_many_pruned_devices_equals_the_per_coordinate_definition(keep_residual):
    """Devices pruned on rows, on cols, on both, further during the round than what they
    received, one without a module, different ranks and example counts: the stacked low-rank
    sum equals the coordinate-by-coordinate mean."""
    previous = {n: random_factors(5, o, i, 300 + k) for k, (n, (o, i)) in enumerate(SHAPES.items())}
    setups = [  # (rows, cols, rank, examples, received rows, received cols)
        ({}, {}, 2, 7, {}, {}),
        ({"q": torch.tensor([0, 3, 4, 9])}, {"down": torch.tensor([2, 5, 6])}, 3, 11, {}, {}),
        (
            {"q": torch.tensor([1, 3, 8])},
            {"q": torch.tensor([0, 2, 4, 6, 8]), "down": torch.tensor([0, 5, 15])},
            4,
            5,
            {"q": torch.tensor([1, 3, 5, 8, 10])},
            {"q": torch.tensor([0, 2, 4, 6, 8, 9]), "down": torch.tensor([0, 1, 5, 7, 15])},
        ),
        ({"down": torch.tensor([0, 4, 9])}, {}, 1, 3, {"down": torch.tensor([0, 4, 9])}, {}),
    ]
    updates = []
    for k, (rows, cols, rank, examples, sent_rows, sent_cols) in enumerate(setups):
        received = restrict_and_truncate(previous, sent_rows, sent_cols, rank, 2.0)
        factors = {}
        for j, (name, (o, i)) in enumerate(SHAPES.items()):
            out_kept = len(rows[name]) if name in rows else o
            in_kept = len(cols[name]) if name in cols else i
            factors[name] = random_factors(rank, out_kept, in_kept, 400 + 10 * k + j)
        if k == 3:
            del factors["q"]  # a device without this module's LoRA
        updates.append(
            LoraUpload(factors, rows, cols, examples, {}, received, sent_rows, sent_cols)
        )
    got = aggregate_masked_svd(
        updates, SHAPES, 10, 2.0, previous=previous, keep_residual=keep_residual
    )
    expected = _dense_reference_mean(updates, previous, 2.0, keep_residual)
    for name in SHAPES:  # max_rank 10 >= min(shape): the re-factorisation is exact
        torch.testing.assert_close(got[name].delta(), expected[name], rtol=1e-9, atol=1e-9)
