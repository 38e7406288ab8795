"""The ClientApp's train handler on a device-local, measured-clock run (real MiniLM): its own
data file, a refusal over its memory budget, bad data failing only its round, and compute
time that really includes the node's slowdown."""

import json

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedspine.config import config_to_dict, load_config
from fedspine.evaluation import full_kept
from fedspine.flower import records
from fedspine.flower.client_app import train
from fedspine.protocol import DevicePlan, Downlink
from fedspine.resources import load_device_resources

SETS = [
    "data.device_local=true",
    "data.labels=ham,spam",
    "fleet.clock=measured",
    "fleet.num_devices=2",
    "train.local_steps=3",
]


@pytest.fixture(scope="module")
def config_json():
    config = load_config("smoke", overrides=SETS)
    return json.dumps(config_to_dict(config), sort_keys=True)


@pytest.fixture(autouse=True)
def task_identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def own_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("node") / "mine.jsonl"
    rows = [{"text": f"win money now offer {i}", "label": "spam"} for i in range(12)]
    rows += [{"text": f"meeting notes for tuesday {i}", "label": "ham"} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def round_report(config_json, node_config):
    res = load_device_resources(config_json)
    downlink = Downlink(DevicePlan(round_num=1, lora_rank=4), full_kept(res), {}, {})
    msg = Message(
        records.encode_downlink(config_json, downlink), dst_node_id=1, message_type="train"
    )
    context = Context(1, 1, node_config, RecordDict(), {})
    return records.decode_uplink(train(msg, context).content).report


def test_device_trains_on_its_own_file_and_reports_real_time(config_json, own_file):
    plain = round_report(config_json, {"partition-id": 0, "data-path": own_file})
    assert plain.ok and plain.num_examples == 24
    assert plain.compute_s == pytest.approx(plain.train_wall_s)
    assert plain.train_memory_mb > 100  # the process's real peak (model included)
    slowed = round_report(config_json, {"partition-id": 0, "data-path": own_file, "slowdown": 3})
    assert slowed.ok
    assert slowed.compute_s == pytest.approx(3 * slowed.train_wall_s)
    assert slowed.handler_wall_s >= slowed.compute_s  # the sleep really happened


def test_over_its_memory_budget_the_device_refuses(config_json, own_file):
    node = {"partition-id": 1, "data-path": own_file, "memory-budget-mb": 1}
    report = round_report(config_json, node)
    assert not report.ok and "over its 1 MB budget" in report.error


def test_bad_local_data_fails_only_that_round_with_the_reason(config_json, tmp_path):
    missing = round_report(config_json, {"partition-id": 1, "data-path": str(tmp_path / "x.csv")})
    assert not missing.ok and missing.error.startswith("local data: Data file not found")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"body": "hello", "label": "ham"}) + "\n")
    report = round_report(config_json, {"partition-id": 1, "data-path": str(wrong)})
    assert not report.ok and "no text column 'text'" in report.error
