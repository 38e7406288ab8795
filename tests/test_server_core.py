"""The FedSpine server core, driven for two rounds from hand-made reports: no Flower, no model.

A toy world: one layer, one LoRA module over 4 FFN channels; devices report pruned kept maps,
LoRA factors in their own coordinates, losses and times, and the core plans, aggregates and
rewards the bandit from them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedspine.config import load_config
from fedspine.fleet.probe import ProbeResult
from fedspine.global_state import GlobalLora
from fedspine.lora.factors import LoraFactors
from fedspine.methods.registry import get_method
from fedspine.models.families import FullDims
from fedspine.protocol import DeviceRecipe, DeviceReport, Registration, Uplink
from fedspine.pruning.kept import KeptIndices, LayerKept
from fedspine.server.core import DeviceCrash, Server

DIMS = FullDims(
    num_layers=1, num_heads=2, num_kv_heads=2, head_dim=2, intermediate_size=4, hidden_size=4
)
FULL = KeptIndices("bert", DIMS, (LayerKept((0, 1), (0, 1), (0, 1, 2, 3)),))
PRUNED = KeptIndices("bert", DIMS, (LayerKept((0, 1), (0, 1), (0, 1, 2)),))  # channel 3 gone
NODES = [907, 13, 55, 4201, 3, 78, 600, 21]  # Flower node ids: random, unrelated to device ids


def coordinates(kept: KeptIndices) -> tuple[dict, dict]:
    channels = kept.layers[0].channels
    rows = None if len(channels) == DIMS.intermediate_size else torch.tensor(channels)
    return {"ffn": rows}, {"ffn": None}


def make_server(method: str = "fedspine") -> Server:
    config = load_config("smoke", overrides=[f"run.method={method}"])
    spec = get_method(method)
    rank = spec.global_rank(config)
    generator = torch.Generator().manual_seed(0)
    factors = {
        "ffn": LoraFactors(A=torch.randn(rank, 4, generator=generator), B=torch.zeros(4, rank))
    }
    head = {"w": torch.zeros(2)}
    lora = GlobalLora(factors, head, config.model.lora_alpha_per_rank, rank, spec.aggregation)
    return Server(spec, config, lora, coordinates, FULL)


def register(server: Server) -> float:
    registrations = {
        node: Registration.with_probe(
            i, "tx2" if i < 4 else "agx-xavier", ProbeResult(0.1 * (i + 1), 5e6, 0.05)
        )
        for i, node in enumerate(NODES)
    }
    return server.register(registrations, step_flops=1e10, round_bytes=100_000)


def reply(server: Server, node: int, downlink, crash: bool = False):
    """A device's answer: it prunes channel 3, nudges its LoRA and reports losses and times."""
    if crash:
        return DeviceCrash("Traceback (most recent call last):\n  ...\nValueError: boom\n")
    device_id = server.devices[node].device_id
    rows, _ = coordinates(PRUNED)
    factors = {
        name: LoraFactors(A=f.A + 0.01 * (device_id + 1), B=f.B[rows[name]] + 0.1)
        for name, f in downlink.factors.items()
    }
    report = DeviceReport(
        ok=True,
        num_examples=10 + device_id,
        loss_before=1.0,
        loss_after=0.7,
        time_s=1.0 + device_id,
        compute_s=0.5 + device_id,
        bytes_up=40_000,
        bytes_down=40_000,
        train_flops=1e11,
        sparsity=0.25,
        lora_rank=downlink.plan.lora_rank,
    )
    return Uplink(report, PRUNED, factors, {"w": torch.full((2,), float(device_id))})


def test_two_fedspine_rounds_plan_absorb_and_reward_without_flower_or_a_model():
    server = make_server()
    assert register(server) == pytest.approx(0.8 + 2 * 65536 / 5e6 + 0.1)  # slowest probe
    # Round 1: sampled in device-id order, each with a bandit arm and the full-width down-link.
    plan1 = server.plan_round(1)
    assert len(plan1) == server.config.run.clients_per_round
    ids = [server.devices[n].device_id for n in plan1]
    assert ids == sorted(ids)
    for downlink in plan1.values():
        plan = downlink.plan
        assert plan.round_num == 1 and plan.recipe is DeviceRecipe.PRUNE_AND_TUNE
        assert 2 <= plan.lora_rank <= 8 and 0.0 <= plan.target_sparsity <= 0.5
        assert downlink.kept == FULL and downlink.fleet_prior is None
        assert downlink.factors["ffn"].A.shape == (plan.lora_rank, 4)
    crashed_node = next(iter(plan1))
    replies = {n: reply(server, n, d, crash=n == crashed_node) for n, d in plan1.items()}
    before = server.global_lora.factors["ffn"].delta()
    outcome = server.absorb(1, dict(reversed(list(replies.items()))))  # arrival order ignored
    # Records: the crash is logged and not counted; the others now hold their pruned maps.
    rows = outcome.rows()
    assert [r["device"] for r in rows] == ids
    assert rows[0]["ok"] is False and rows[0]["error"] == "ValueError: boom"
    assert server.devices[crashed_node].rounds_seen == 0
    assert server.devices[crashed_node].kept == FULL
    for node in list(plan1)[1:]:
        record = server.devices[node]
        assert record.kept == PRUNED and record.sparsity == 0.25 and record.rounds_seen == 1
    # The bandit was rewarded for every arm it proposed; the crash with the failure reward.
    assert rows[0]["reward"]["failed"] is True
    assert all(r["reward"]["loss_gain"] == pytest.approx(0.3) for r in rows[1:])
    assert all(r["reward"]["arm_lora_rank"] == r["lora_rank"] for r in rows[1:])
    assert outcome.time_s == max(r["time_s"] for r in rows)
    # Aggregation: channel 3 was kept by nobody, so its row of the global delta is unchanged;
    # the kept rows moved, and the head is the example-weighted mean of the three uploads.
    after = server.global_lora.factors["ffn"].delta()
    torch.testing.assert_close(after[3], before[3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[:3], before[:3], atol=1e-3)
    uploads = [
        (server.devices[n].device_id, 10 + server.devices[n].device_id) for n in list(plan1)[1:]
    ]
    expected_head = sum(d * w for d, w in uploads) / sum(w for _, w in uploads)
    torch.testing.assert_close(server.global_lora.head["w"], torch.full((2,), expected_head))
    # Round 2: pruned devices get their own coordinates and a target at least what they reached.
    plan2 = server.plan_round(2)
    for node, downlink in plan2.items():
        record = server.devices[node]
        assert downlink.kept == record.kept
        assert downlink.factors["ffn"].B.shape[0] == len(record.kept.layers[0].channels)
        assert downlink.plan.target_sparsity >= record.sparsity - 1e-9
    outcome2 = server.absorb(2, {n: reply(server, n, d) for n, d in plan2.items()})
    assert all(p.ok and p.update_norm > 0 for p in outcome2.participants)
    assert all("total" in r for r in outcome2.rewards)
    # The catch-up round asks every device below the target to reach it, with recovery steps.
    final = server.plan_final(3)
    assert set(final) == set(server.devices)  # nobody is at 50% yet
    assert all(d.plan.target_sparsity == 0.5 for d in final.values())
    assert all(
        d.plan.local_steps == server.config.pruning.final_recovery_steps for d in final.values()
    )


def test_replies_in_any_arrival_order_give_the_same_state():
    states = []
    for order in (list, lambda items: list(reversed(items))):
        server = make_server()
        register(server)
        downlinks = server.plan_round(1)
        replies = dict(order(list({n: reply(server, n, d) for n, d in downlinks.items()}.items())))
        outcome = server.absorb(1, replies)
        states.append((server.global_lora.factors["ffn"].delta(), outcome.rows()))
    torch.testing.assert_close(states[0][0], states[1][0], rtol=0, atol=0)
    assert states[0][1] == states[1][1]


def test_unpruned_methods_have_no_catch_up_round_and_a_round_without_replies_changes_nothing():
    server = make_server("hetlora")
    register(server)
    downlinks = server.plan_round(1)
    assert all(d.plan.recipe is DeviceRecipe.RANK_SELF_PRUNE for d in downlinks.values())
    # HetLoRA's ranks follow the announced tier (weakest tier lowest)
    for node, downlink in downlinks.items():
        assert downlink.plan.lora_rank == {"tx2": 4, "agx-xavier": 16}[server.devices[node].tier]
    before = dataclasses.replace(server.global_lora)
    outcome = server.absorb(1, {})
    assert outcome.participants == [] and outcome.time_s == 0.0
    assert server.global_lora.factors is before.factors
    assert server.plan_final(2) == {}
