"""The server core survives missing, late and malformed replies (toy world of test_server_core)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedspine.bandit.reward import failed_reward
from fedspine.bandit.time_model import predicted_time_s
from fedspine.lora.factors import LoraFactors
from fedspine.methods.fedspine import reward_weights
from fedspine.protocol import NoReply, ReplyStatus
from fedspine.pruning.kept import KeptIndices, LayerKept
from fedspine.server.core import Server
from test_server_core import FULL, make_server, register, reply


def _state(server: Server) -> tuple[torch.Tensor, torch.Tensor]:
    return server.global_lora.factors["ffn"].delta().clone(), server.global_lora.head["w"].clone()


def _with(server: Server, **run) -> Server:
    config = server.config
    server.config = dataclasses.replace(config, run=dataclasses.replace(config.run, **run))
    return server


def _round(server: Server, round_num: int = 1):
    server_plan = server.plan_round(round_num)
    return server_plan, {n: reply(server, n, d) for n, d in server_plan.items()}


def test_a_round_without_replies_leaves_the_global_state_and_records_unchanged():
    server = make_server()
    register(server)
    plan, _ = _round(server)
    before = _state(server)
    statuses = [ReplyStatus.DROPPED, ReplyStatus.CRASHED, ReplyStatus.LATE, ReplyStatus.DROPPED]
    replies = {n: NoReply(s, "gone", 3.0) for n, s in zip(plan, statuses, strict=True)}
    outcome = server.absorb(1, replies)
    after = _state(server)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1], before[1])
    assert all(server.devices[n].kept == FULL and server.devices[n].rounds_seen == 0 for n in plan)
    assert outcome.skipped and not outcome.all_raised
    assert outcome.status_counts()["dropped"] == 2 and outcome.status_counts()["late"] == 1
    assert all(r["reward"]["failed"] for r in outcome.rows())  # every arm pays for the loss
    assert outcome.time_s == 3.0  # no deadline: what the transport waited


def test_a_late_reply_is_not_aggregated_and_the_round_ends_at_the_deadline():
    server = _with(make_server(), round_deadline_s=2.5)
    register(server)
    plan, replies = _round(server)  # device i's round takes 1 + i seconds
    outcome = server.absorb(1, replies)
    rows = outcome.rows()
    for row, node in zip(rows, plan, strict=True):
        late = 1.0 + server.devices[node].device_id > 2.5
        assert row["status"] == ("late" if late else "ok")
        assert row["ok"] is not late
        assert (server.devices[node].kept == FULL) is late  # a late structure is not adopted
        if late:
            assert row["reward"]["failed"] and "deadline" in row["error"]
    assert outcome.time_s == pytest.approx(2.5)


def test_a_dropped_device_costs_the_whole_deadline():
    server = _with(make_server(), round_deadline_s=4.0)
    register(server)
    plan, replies = _round(server)
    first = next(iter(plan))
    replies[first] = NoReply(ReplyStatus.DROPPED, "away")
    outcome = server.absorb(1, replies)
    assert outcome.time_s == pytest.approx(4.0)
    assert outcome.rows()[0]["status"] == "dropped"


def _malformed(kind: str, good):
    factors = good.factors["ffn"]
    if kind == "nan":
        bad = LoraFactors(A=factors.A.clone().fill_(float("nan")), B=factors.B)
        return dataclasses.replace(good, factors={"ffn": bad})
    if kind == "shape":  # claims channel 3 pruned but sends full-width B
        bad = LoraFactors(A=factors.A, B=torch.zeros(4, factors.B.shape[1]))
        return dataclasses.replace(good, factors={"ffn": bad})
    if kind == "module":
        return dataclasses.replace(good, factors={"attn": factors})
    if kind == "head":
        return dataclasses.replace(good, head={"w": torch.zeros(3)})
    if kind == "kept":  # another model's structure
        dims = dataclasses.replace(good.kept.dims, intermediate_size=5)
        layer = LayerKept((0, 1), (0, 1), (0, 1, 2, 3, 4))
        return dataclasses.replace(good, kept=KeptIndices("bert", dims, (layer,)))
    if kind == "examples":
        return dataclasses.replace(good, report=dataclasses.replace(good.report, num_examples=0))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["nan", "shape", "module", "head", "kept", "examples"])
def test_a_malformed_reply_is_rejected_with_a_reason_and_never_aggregated(kind):
    server = make_server()
    register(server)
    plan, replies = _round(server)
    bad_node = next(iter(plan))
    replies[bad_node] = _malformed(kind, replies[bad_node])
    twin = make_server()  # the same round with the bad device simply absent
    register(twin)
    twin_plan, twin_replies = _round(twin)
    del twin_replies[bad_node]
    outcome = server.absorb(1, replies)
    twin.absorb(1, twin_replies)
    row = outcome.rows()[0]
    assert row["status"] == "rejected" and row["error"].startswith("rejected: ")
    assert server.devices[bad_node].kept == FULL
    for mine, theirs in zip(_state(server), _state(twin), strict=True):
        torch.testing.assert_close(mine, theirs)
        assert torch.isfinite(mine).all()


def test_below_min_replies_the_round_is_skipped_but_the_bandit_learns():
    server = _with(make_server(), min_replies=4)
    register(server)
    plan, replies = _round(server)
    replies[next(iter(plan))] = NoReply(ReplyStatus.CRASHED, "died")
    before = _state(server)
    outcome = server.absorb(1, replies)
    assert outcome.skipped
    torch.testing.assert_close(_state(server)[0], before[0])
    assert all(server.devices[n].kept == FULL for n in plan)
    assert sum("total" in r for r in outcome.rewards) == len(plan)


def test_the_bandit_prices_arms_predicted_to_miss_the_deadline_as_failures():
    server = make_server()
    register(server)
    planner = server.planner
    node = server.in_device_order(server.devices)[3]  # a slow tx2 (0.4 s per probe step)
    big = predicted_time_s(planner.speeds[node], planner.work, 0.0, 0.0, 8)
    small = predicted_time_s(planner.speeds[node], planner.work, 0.0, 0.5, 2)
    assert small < big
    planner.deadline_s = (small + big) / 2  # the full model at rank 8 misses it
    cost = planner._arm_cost(node, 0.0)
    miss = -failed_reward(reward_weights(server.config.bandit)).total
    assert cost(0.0, 8) == pytest.approx(miss)
    assert cost(0.5, 2) < miss
