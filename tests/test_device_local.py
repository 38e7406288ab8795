"""Device-local data: each node reads only its own file, mapped onto the run's label set;
bad data is a clear DataError; deploy-local's shards are disjoint and cover the pool."""

import json

import pytest

from fedspine.config import load_config
from fedspine.data.device_local import load_device_data
from fedspine.deploy.node_config import NodeSettings
from fedspine.deploy.shards import write_shards
from fedspine.errors import DataError
from fedspine.resources import load_data, with_agreed_labels


class FakeTokenizer:
    """Word ids, enough for shapes and labels (tokenising is not what is tested here)."""

    pad_token_id = 0

    def __call__(self, texts, truncation, max_length, padding):
        return {"input_ids": [[len(w) + 1 for w in t.split()][:max_length] for t in texts]}


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def device_config(*sets):
    return load_config("smoke", overrides=["data.device_local=true", *sets]).data


def test_own_rows_are_mapped_onto_the_agreed_label_order(tmp_path):
    rows = [{"body": f"mail number {i}", "kind": k} for i, k in enumerate(["spam", "ham"] * 4)]
    path = write_rows(tmp_path / "mine.jsonl", rows)
    settings = NodeSettings(0, path, (("text_column", "body"), ("label_column", "kind")))
    data = load_device_data(settings, device_config("data.labels=spam,ham"), FakeTokenizer(), 4)
    assert data.labels == [0, 1] * 4  # spam is class 0 because the run says so
    assert len(data) == 8


@pytest.mark.parametrize(
    ("rows", "settings_kwargs", "message"),
    [
        (None, {}, "Data file not found"),
        ([{"text": "a b", "label": "ham"}], {"columns": (("text_column", "body"),)}, "no text"),
        ([{"text": "a b", "label": "eggs"}] * 9, {}, "'eggs' are not in the run's label set"),
        ([{"text": "a b", "label": "ham"}] * 2, {}, "needs at least 8"),
    ],
)
def test_bad_local_data_names_the_problem(tmp_path, rows, settings_kwargs, message):
    path = tmp_path / "node.jsonl"
    if rows is not None:
        write_rows(path, rows)
    settings = NodeSettings(0, str(path), **settings_kwargs)
    with pytest.raises(DataError, match=message):
        load_device_data(settings, device_config("data.labels=ham,spam"), FakeTokenizer(), 8)


def test_a_node_without_data_path_is_told_the_key():
    with pytest.raises(DataError, match="no data-path"):
        load_device_data(NodeSettings(0), device_config("data.labels=ham,spam"), FakeTokenizer(), 1)


def test_shards_are_disjoint_and_the_server_keeps_only_the_test_set(tmp_path):
    config = load_config("smoke", overrides=["fleet.num_devices=3"])
    shards = write_shards(config, tmp_path)
    pool, test = load_data(config)
    node_texts = [
        [json.loads(line)["text"] for line in path.read_text().splitlines()]
        for path in shards.nodes
    ]
    flat = [t for texts in node_texts for t in texts]
    assert len(flat) == len(pool) and sorted(flat) == sorted(pool.texts)  # each row once
    assert all(len(texts) >= config.train.batch_size for texts in node_texts)
    server = [json.loads(line) for line in shards.server_eval.read_text().splitlines()]
    assert sorted(r["text"] for r in server) == sorted(test.texts)
    assert not set(flat) & {r["text"] for r in server}
    # the deployed run's server reads its file as an evaluation set only, on the agreed labels
    sets = ["data.device_local=true", f"data.dataset={shards.server_eval}", "fleet.num_devices=3"]
    deployed = with_agreed_labels(load_config("smoke", overrides=sets))
    assert deployed.data.labels.split(",") == sorted(shards.label_names)
    train, held_out = load_data(deployed)
    assert len(train) == 0 and len(held_out) == len(test)


def test_fedspine_run_refuses_device_local_data(tmp_path):
    from fedspine.errors import ConfigError
    from fedspine.flower.simulation import simulate

    config = load_config("smoke", overrides=["data.device_local=true"])
    with pytest.raises(ConfigError, match="deploy-local"):
        simulate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
