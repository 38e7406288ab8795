"""The baselines' aggregation rules as their papers define them, on hand-made factors:
HetLoRA's norm weights, FlexLoRA's exact average and SVD redistribution, FLoRA's exact stack
and FedSA-LoRA's A-only messages (B never leaves a device)."""

from __future__ import annotations

import pytest
import torch

from fedspine.config import load_config
from fedspine.global_state import GlobalLora
from fedspine.lora import LoraFactors, LoraUpload, make_aggregator, restrict_and_truncate
from fedspine.lora.aggregation import (
    aggregate_zero_pad,
    average_shared_a,
    delta_norm,
    restricted_deltas,
    stack_factors,
)
from fedspine.methods.registry import get_method
from fedspine.protocol import factors_to_tensors, payload_bytes, tensors_to_factors
from fedspine.server.validation import factors_problem

torch.set_num_threads(1)
DT = torch.float64
SHAPES = {"q": (12, 10), "down": (10, 16)}
S = 2.0


def factors(rank, out_features, in_features, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(
        A=scale * torch.randn(rank, in_features, generator=g, dtype=DT),
        B=scale * torch.randn(out_features, rank, generator=g, dtype=DT),
    )


def upload(rank, seed, examples, scale=1.0, rows=None, cols=None):
    rows, cols = rows or {}, cols or {}
    made = {}
    for k, (name, (o, i)) in enumerate(SHAPES.items()):
        out = len(rows[name]) if name in rows else o
        width = len(cols[name]) if name in cols else i
        made[name] = factors(rank, out, width, seed + k, scale)
    return LoraUpload(made, rows, cols, examples)


def padded(u, name, max_rank):
    """The upload's factors zero-padded to full width and max_rank, sqrt(S) in each."""
    f = u.factors[name]
    o, i = SHAPES[name]
    A, B = torch.zeros(max_rank, i, dtype=DT), torch.zeros(o, max_rank, dtype=DT)
    rows = u.rows.get(name, torch.arange(o))
    cols = u.cols.get(name, torch.arange(i))
    A[: f.rank, cols] = S**0.5 * f.A
    B[rows, : f.rank] = S**0.5 * f.B
    return A, B


# -- HetLoRA ------------------------------------------------------------------------------------


def test_hetlora_weights_are_the_frobenius_norms_of_the_deltas_normalised():
    small, large = upload(2, 0, examples=90, scale=0.3), upload(4, 10, examples=10, scale=2.0)
    result = aggregate_zero_pad([small, large], SHAPES, 6, scaling=S, weighting="norm")
    for name in SHAPES:
        norms = [torch.linalg.norm(u.factors[name].delta(S)).item() for u in (small, large)]
        assert delta_norm(small.factors[name], S) == pytest.approx(norms[0], rel=1e-10)
        p = [n / sum(norms) for n in norms]  # the example counts play no part
        (a0, b0), (a1, b1) = padded(small, name, 6), padded(large, name, 6)
        torch.testing.assert_close(result[name].A, p[0] * a0 + p[1] * a1)
        torch.testing.assert_close(result[name].B, p[0] * b0 + p[1] * b1)
        assert p[1] > 0.9  # the larger update dominates although it has 10% of the examples


def test_hetlora_is_the_norm_weighted_rule_with_truncation_down_and_the_old_one_kept():
    assert get_method("hetlora").aggregation == "sparsity-weighted"
    assert get_method("hetlora-examples").aggregation == "zero-pad"
    rule = make_aggregator("sparsity-weighted")
    a, b = upload(2, 0, 1), upload(4, 7, 1, scale=3.0)
    merged = rule.aggregate({n: factors(6, *SHAPES[n], 99) for n in SHAPES}, S, 6, [a, b], 1.0)
    down = rule.downlink(merged, S, {}, {}, 2)  # truncation: the first r_k components
    for name in SHAPES:
        torch.testing.assert_close(down[name].A, merged[name].A[:2])
        torch.testing.assert_close(down[name].B, merged[name].B[:, :2])
    by_examples = make_aggregator("zero-pad").aggregate(
        {n: factors(6, *SHAPES[n], 99) for n in SHAPES}, S, 6, [a, b], 1.0
    )
    assert not torch.allclose(by_examples["q"].A, merged["q"].A)


def test_hetlora_zero_updates_fall_back_to_equal_weights():
    zero = {
        n: LoraFactors(A=torch.zeros(2, i, dtype=DT), B=torch.zeros(o, 2, dtype=DT))
        for n, (o, i) in SHAPES.items()
    }
    other = upload(2, 3, 1)
    both = [LoraUpload(zero, {}, {}, 1), LoraUpload(zero, {}, {}, 1)]
    result = aggregate_zero_pad(both, SHAPES, 2, S, weighting="norm")
    assert all(torch.all(f.A == 0) for f in result.values())
    mixed = aggregate_zero_pad([both[0], other], SHAPES, 2, S, weighting="norm")
    torch.testing.assert_close(mixed["q"].A, padded(other, "q", 2)[0])  # zero weight for zero


# -- FlexLoRA -----------------------------------------------------------------------------------


def test_flexlora_holds_the_example_weighted_full_delta_exactly_and_redistributes_by_svd():
    config = load_config("smoke", overrides=["run.method=flexlora"])
    spec = get_method("flexlora")
    tiers = [int(r) for r in config.model.tier_ranks.split(",")]
    assert spec.global_rank(config) == max(tiers) * config.run.clients_per_round
    ups = [upload(4, 0, 10), upload(8, 10, 30), upload(4, 20, 60)]  # ranks sum to 16 > 8
    rule = make_aggregator(spec.aggregation)
    start = {
        n: LoraFactors(A=torch.zeros(16, i, dtype=DT), B=torch.zeros(o, 16, dtype=DT))
        for n, (o, i) in SHAPES.items()
    }
    merged = rule.aggregate(start, S, 16, ups, 1.0)
    for name in SHAPES:
        mean = sum(u.num_examples * u.factors[name].delta(S) for u in ups) / 100
        torch.testing.assert_close(merged[name].delta(S), mean, rtol=1e-9, atol=1e-9)
        # the down-link to a rank-4 device is the best rank-4 approximation of that mean
        down = rule.downlink(merged, S, {}, {}, 4)[name]
        U, sv, Vh = torch.linalg.svd(mean)
        best = U[:, :4] @ torch.diag(sv[:4]) @ Vh[:4]
        torch.testing.assert_close(down.delta(S), best, rtol=1e-8, atol=1e-8)
    # at the largest tier rank alone (the old global) the mean would have been truncated
    short = rule.aggregate(
        {n: LoraFactors(A=f.A[:8], B=f.B[:, :8]) for n, f in start.items()}, S, 8, ups, 1.0
    )
    mean_q = sum(u.num_examples * u.factors["q"].delta(S) for u in ups) / 100
    assert (short["q"].delta(S) - mean_q).norm() > 1e-3 * mean_q.norm()


# -- FLoRA --------------------------------------------------------------------------------------


def test_flora_stack_is_the_exact_example_weighted_sum_of_the_deltas():
    rows = {"q": torch.tensor([0, 2, 3, 7, 11])}
    cols = {"down": torch.tensor([1, 4, 5, 9, 10, 15])}
    ups = [upload(2, 0, 10), upload(4, 5, 30, rows=rows, cols=cols), upload(8, 9, 60)]
    stacked = stack_factors(ups, SHAPES, S)
    for name, shape in SHAPES.items():
        assert stacked[name].rank == 2 + 4 + 8  # the payload grows with the participants
        expected = torch.zeros(shape, dtype=DT)
        for u in ups:
            local = u.factors[name].delta(S)
            r = u.rows.get(name, torch.arange(shape[0]))
            c = u.cols.get(name, torch.arange(shape[1]))
            expected[r.unsqueeze(1), c.unsqueeze(0)] += u.num_examples / 100 * local
        torch.testing.assert_close(stacked[name].delta(), expected, rtol=1e-12, atol=1e-12)


def test_flora_merges_each_round_into_the_global_delta_exactly():
    rule = make_aggregator("stacking")
    assert rule.merges_into_base and not rule.shares_only_a
    full = 10  # max over modules of min(out, in): exact for every module
    previous = {n: factors(3, *SHAPES[n], 40 + k) for k, n in enumerate(SHAPES)}
    previous = {
        n: LoraFactors(
            A=torch.cat([f.A, torch.zeros(full - 3, f.A.shape[1], dtype=DT)]),
            B=torch.cat([f.B, torch.zeros(f.B.shape[0], full - 3, dtype=DT)], dim=1),
        )
        for n, f in previous.items()
    }
    ups = [upload(2, 0, 1), upload(4, 6, 3)]
    merged = rule.aggregate(previous, S, full, ups, 1.0)
    for name in SHAPES:
        step = (ups[0].factors[name].delta(S) + 3 * ups[1].factors[name].delta(S)) / 4
        expected = previous[name].delta(S) + step
        torch.testing.assert_close(merged[name].delta(S), expected, rtol=1e-9, atol=1e-9)
        # what a device adds to its base: the merged delta at its kept coordinates
        kept = {"q": torch.tensor([1, 5])}
        dense = restricted_deltas(merged, kept, {}, S)
        if name == "q":
            torch.testing.assert_close(dense["q"], expected[[1, 5]], rtol=1e-9, atol=1e-9)


def test_flora_down_link_bytes_are_the_missed_stacks_or_the_dense_delta_if_smaller():
    zero = {
        n: LoraFactors(A=torch.zeros(10, i), B=torch.zeros(o, 10)) for n, (o, i) in SHAPES.items()
    }
    lora = GlobalLora(zero, {}, S, 10, "stacking")
    lora.stack_ranks = [3, 5, 4]
    per_rank = sum(o + i for o, i in SHAPES.values())  # 22 + 26
    dense = sum(o * i for o, i in SHAPES.values())  # 120 + 160
    assert lora.stack_bytes(3, {}, {}) == 0  # up to date: nothing to fetch
    assert lora.stack_bytes(2, {}, {}) == 4 * per_rank * 4
    assert lora.stack_bytes(0, {}, {}) == min(12 * per_rank, dense) * 4 == dense * 4
    rows = {"q": torch.arange(6)}
    assert lora.stack_bytes(2, rows, {}) == 4 * (per_rank - 6) * 4  # a pruned device


# -- FedSA-LoRA ---------------------------------------------------------------------------------


def test_fedsa_messages_carry_a_alone_and_b_never_travels():
    rule = make_aggregator("shared-a")
    assert rule.shares_only_a and get_method("fedsa-lora").aggregation == "shared-a"
    global_factors = {n: factors(4, *SHAPES[n], 50 + k) for k, n in enumerate(SHAPES)}
    down = rule.downlink(global_factors, S, {}, {}, 4)
    assert all(f.B is None for f in down.values())
    flat = factors_to_tensors(down)
    assert sorted(flat) == sorted(f"{n}::A" for n in SHAPES)  # no B on the wire
    assert payload_bytes(flat) == sum(4 * i * 8 for _, i in SHAPES.values())
    assert all(f.B is None for f in tensors_to_factors(flat).values())
    # an uplink that carries B is refused: B must stay on the device
    with_b = {n: factors(4, *SHAPES[n], 60 + k) for k, n in enumerate(SHAPES)}
    problem = factors_problem(with_b, global_factors, {}, {}, 4, a_only=True)
    assert problem and "B must stay on the device" in problem
    a_only = {n: LoraFactors(A=f.A, B=None) for n, f in with_b.items()}
    assert factors_problem(a_only, global_factors, {}, {}, 4, a_only=True) is None
    assert "no LoRA B" in factors_problem(a_only, global_factors, {}, {}, 4)


def test_fedsa_averages_a_by_examples_and_leaves_the_global_b_alone():
    previous = {n: factors(4, *SHAPES[n], 70 + k) for k, n in enumerate(SHAPES)}
    cols = {"down": torch.arange(8)}
    ups = []
    for seed, examples, c in ((0, 10, {}), (5, 30, cols)):
        u = upload(4, seed, examples, cols=c)
        ups.append(
            LoraUpload(
                {n: LoraFactors(A=f.A, B=None) for n, f in u.factors.items()}, {}, c, examples
            )
        )
    merged = make_aggregator("shared-a").aggregate(previous, S, 4, ups, 1.0)
    torch.testing.assert_close(
        merged["q"].A, (10 * ups[0].factors["q"].A + 30 * ups[1].factors["q"].A) / 40
    )
    down_a = merged["down"].A
    both = (10 * ups[0].factors["down"].A[:, :8] + 30 * ups[1].factors["down"].A) / 40
    torch.testing.assert_close(down_a[:, :8], both)
    torch.testing.assert_close(down_a[:, 8:], ups[0].factors["down"].A[:, 8:])  # one kept it
    assert all(merged[n].B is previous[n].B for n in SHAPES)
    with pytest.raises(ValueError, match="rank"):
        average_shared_a(
            [LoraUpload({"q": LoraFactors(A=torch.zeros(2, 10), B=None)}, {}, {}, 1)], previous
        )


def test_an_a_only_factor_pair_has_no_delta():
    with pytest.raises(ValueError, match="no B"):
        LoraFactors(A=torch.zeros(4, 10), B=None).delta()


def test_restrict_and_truncate_is_unchanged_for_the_svd_rules():
    """FlexLoRA's down-link is the truncated SVD of the device's slice (regression guard)."""
    g = {"q": factors(6, *SHAPES["q"], 3)}
    down = restrict_and_truncate(g, {}, {}, 6, S)["q"]
    torch.testing.assert_close(down.delta(S), g["q"].delta(), rtol=1e-9, atol=1e-9)


# -- FLoRA through the server core (toy world of test_server_core: one 4 x 4 module) -------------


def test_flora_server_sends_no_factors_and_charges_each_device_what_it_has_not_merged(tmp_path):
    from fedspine.protocol import DeviceReport, Uplink
    from fedspine.server.checkpoint import (
        RunPosition,
        load_checkpoint,
        restore_server,
        save_checkpoint,
    )
    from fedspine.server.core import Server
    from test_server_core import FULL, coordinates, register

    config = load_config("smoke", overrides=["run.method=flora", "model.tier_ranks=1,2,3"])
    spec = get_method("flora")
    assert spec.global_rank(config) == 0  # resolved to the modules' full rank: 4 here

    def server() -> Server:
        start = {"ffn": LoraFactors(A=torch.randn(4, 4), B=torch.zeros(4, 4))}
        lora = GlobalLora(start, {"w": torch.zeros(2)}, S, 4, spec.aggregation)
        made = Server(spec, config, lora, coordinates, FULL)
        register(made)
        return made

    def play(srv, round_num):
        plan = srv.plan_round(round_num)
        replies, sent = {}, {}
        for node, down in plan.items():
            assert down.factors == {}  # a fresh LoRA on the device, nothing to send
            if down.merged:  # the merged global delta, to add to its base
                current = srv.global_lora.factors["ffn"].delta(S)
                torch.testing.assert_close(down.merged["ffn"], current)
            r = down.plan.lora_rank
            g = torch.Generator().manual_seed(round_num * 100 + node)
            trained = LoraFactors(
                A=torch.randn(r, 4, generator=g), B=torch.randn(4, r, generator=g)
            )
            report = DeviceReport(ok=True, num_examples=10, time_s=1.0, lora_rank=r)
            replies[node] = Uplink(report, FULL, {"ffn": trained}, {"w": torch.ones(2)})
            sent[node] = (down, trained)
        before = srv.global_lora.factors["ffn"].delta(S)
        srv.absorb(round_num, replies)
        step = sum(t.delta(S) for _, t in sent.values()) / len(sent)  # equal example counts
        torch.testing.assert_close(srv.global_lora.factors["ffn"].delta(S), before + step)
        return sent

    original = server()
    first = play(original, 1)
    assert all(d.merged == {} and d.merged_wire_bytes == 0 for d, _ in first.values())
    assert original.global_lora.stack_ranks == [sum(t.rank for _, t in first.values())]
    save_checkpoint(tmp_path, config, original, RunPosition(next_round=2))
    restored = server()
    restore_server(restored, load_checkpoint(tmp_path, config)[0])
    assert restored.global_lora.stack_ranks == original.global_lora.stack_ranks
    for srv in (original, restored):
        second = play(srv, 2)
        assert all(d.merged for d, _ in second.values())
        for node, (down, _) in second.items():
            missed = srv.global_lora.stack_ranks[0]  # nobody has merged round 1's stack yet
            assert down.merged_wire_bytes == 4 * min(missed * (4 + 4), 4 * 4)
            assert srv.devices[node].synced == 1  # it merged what it was sent
