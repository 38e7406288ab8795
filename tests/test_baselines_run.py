"""FLoRA and FedSA-LoRA end to end on the real small model, in process (no Flower): what the
devices receive and send, and that the runs finish with every device scored."""

from __future__ import annotations

import pytest
import torch

from fedspine.config import load_config
from fedspine.lora.peft_io import get_lora_factors
from fedspine.protocol import factors_to_tensors, payload_bytes
from fedspine.report.final_state import OWN_B_FILE, load_own_b
from fedspine.report.record import DEVICE_STATE_DIR, read_rounds
from fedspine.resources import build_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.run import full_peft_model, run_federation
from local_channel import LocalChannel

TINY = [
    "fleet.num_devices=3",
    "run.clients_per_round=2",
    "run.rounds=3",
    "train.local_steps=2",
    "data.max_train_examples=120",
    "data.max_test_examples=40",
    "data.round_eval_examples=20",
    "eval.final_eval_examples=20",
]


def _run(tmp_path, method: str, state: bool = False):
    config = load_config("smoke", overrides=[*TINY, f"run.method={method}"])
    res = build_resources(config)
    run_dir = RunDirectory(tmp_path / "run")
    channel = LocalChannel(res, run_dir.path / DEVICE_STATE_DIR if state else None)
    summary = run_federation(channel, config, run_dir)
    return res, run_dir, channel, summary, read_rounds(run_dir.path)


def test_flora_runs_with_fresh_lora_and_pays_for_the_stacks_it_missed(tmp_path):
    res, _, channel, summary, rows = _run(tmp_path, "flora")
    assert [r["round"] for r in rows] == [1, 2, 3]  # unpruned: no catch-up round
    assert all(p["ok"] for r in rows for p in r["participants"])
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    shapes = [
        (f.B.shape[0], f.A.shape[1]) for f in get_lora_factors(full_peft_model(res, 1)).values()
    ]
    per_rank = sum(o + i for o, i in shapes)
    dense = sum(o * i for o, i in shapes)
    head = rows[0]["participants"][0]["bytes_down"]  # round 1: no merge yet, fresh LoRA only
    assert all(p["bytes_down"] == head for p in rows[0]["participants"])
    stack = [sum(p["lora_rank"] for p in r["participants"]) for r in rows]
    synced = {}  # device -> aggregations merged into its base
    for index, row in enumerate(rows):
        for p in row["participants"]:
            missed = sum(stack[synced.get(p["device"], 0) : index])
            expected = head + 4 * min(missed * per_rank, dense) if missed else head
            assert p["bytes_down"] == expected
            synced[p["device"]] = index
    assert any(p["bytes_down"] > head for p in rows[1]["participants"])
    # no LoRA factors down (every device trains a fresh LoRA); the merged delta from round 2
    assert all(d.factors == {} for d in channel.downlinks)
    first = [d for d in channel.downlinks if d.plan.round_num == 1]
    later = [d for d in channel.downlinks if d.plan.round_num > 1]
    assert all(d.merged == {} for d in first) and all(d.merged for d in later)
    assert {p["lora_rank"] for r in rows for p in r["participants"]} <= {4, 8, 16}


def test_fedsa_keeps_b_on_each_device_and_scores_each_devices_own_model(tmp_path):
    res, run_dir, channel, summary, rows = _run(tmp_path, "fedsa-lora", state=True)
    assert all(p["ok"] for r in rows for p in r["participants"])
    for uplink, part in zip(
        channel.uplinks, [p for r in rows for p in r["participants"]], strict=True
    ):
        assert all(f.B is None for f in uplink.factors.values())  # B never left the device
        a_bytes = payload_bytes(factors_to_tensors(uplink.factors))
        assert part["bytes_up"] == a_bytes + payload_bytes(uplink.head)
    trained = {p["device"] for r in rows for p in r["participants"]}
    saved = load_own_b(run_dir.path)
    assert (run_dir.path / OWN_B_FILE).is_file() and set(saved) == trained
    node_of = channel.node_of
    for device, own in saved.items():  # what the harness scored is what the device holds
        held = channel.own_b[node_of[device]]
        assert set(own) == set(held)
        assert all(torch.equal(own[n], held[n]) and own[n].abs().sum() > 0 for n in own)
    assert len(summary["devices"]) == 3
    assert all(0.0 <= d["accuracy"] <= 1.0 for d in summary["devices"])
    assert all(r["accuracy"] is not None for r in rows)  # participants' own models per round


def test_fedsa_without_the_devices_storage_refuses_to_score(tmp_path):
    """Scoring a trained device with a zero B would be silently wrong: it is an error."""
    from fedspine.errors import ConfigError

    with pytest.raises(ConfigError, match="fedsa-lora scores each device's own model"):
        _run(tmp_path, "fedsa-lora", state=False)
