"""Placement settings (Ray address, client resources, torch device) and the cluster checks,
without a cluster. There is no GPU here: the cuda path is tested only for its selection and
error logic (torch.cuda.is_available patched), never run."""

import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fedspine import cluster
from fedspine.compare import check_reusable, method_config
from fedspine.compute_device import compute_device
from fedspine.config import config_to_dict, config_to_toml, load_config
from fedspine.errors import ConfigError
from fedspine.flower import records
from fedspine.flower.client_app import _state_store
from fedspine.train import TokenisedData


def config(*sets: str):
    return load_config("smoke", overrides=list(sets))


# ----- settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["", "auto", "10.0.0.1:6379", "head.example:6379"])
def test_ray_address_forms_accepted(address):
    assert config(f"run.ray_address={address}").run.ray_address == address


@pytest.mark.parametrize("address", ["10.0.0.1", "host:0", "host:port", ":6379", "ray://h:1"])
def test_bad_ray_address_is_one_line_naming_the_forms(address):
    with pytest.raises(ConfigError, match=r"run\.ray_address .* auto, or host:port") as err:
        config(f"run.ray_address={address}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["run.client_cpus=0"], r"run\.client_cpus must be > 0"),
        (["run.client_gpus=-1", "train.device=cuda"], r"run\.client_gpus must be 0, a share"),
        (["run.client_gpus=1.5", "train.device=cuda"], r"run\.client_gpus must be 0, a share"),
        (["train.device=tpu"], r"train\.device must be one of: cpu, cuda, auto"),
        (["run.client_gpus=0.25"], r"reserves GPUs that train\.device=cpu never uses"),
    ],
)
def test_bad_placement_settings(sets, match):
    with pytest.raises(ConfigError, match=match):
        config(*sets)


def test_gpu_shares_and_whole_gpus_are_accepted():
    assert config("run.client_gpus=0.25", "train.device=cuda").run.client_gpus == 0.25
    assert config("run.client_gpus=2", "train.device=auto").run.client_gpus == 2.0


def test_placement_settings_are_recorded_in_config_toml():
    text = config_to_toml(config("run.ray_address=auto", "run.client_cpus=0.5"))
    assert 'ray_address = "auto"' in text and "client_cpus = 0.5" in text
    assert "client_gpus = 0.0" in text and 'device = "cpu"' in text


def test_compare_reuses_a_run_made_elsewhere_but_not_on_another_device(tmp_path):
    made = method_config(config("run.ray_address=10.0.0.1:6379", "run.client_cpus=2"), "fedlora")
    assert (made.run.ray_address, made.run.client_cpus) == ("10.0.0.1:6379", 2.0)  # passed on
    (tmp_path / "config.toml").write_text(config_to_toml(made))
    check_reusable(tmp_path, method_config(config(), "fedlora"))  # placement only: reused
    with pytest.raises(ConfigError, match=r"train\.device"):
        check_reusable(tmp_path, method_config(config("train.device=auto"), "fedlora"))


# ----- the backend config -------------------------------------------------------------------
def test_local_backend_is_todays_with_a_private_ray():
    backend = cluster.backend_config(config().run)
    assert backend == {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "address": "local",  # never a cluster found through `ray start` or RAY_ADDRESS
            "num_cpus": 2,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": False,
        },
    }


def test_local_backend_keeps_workers_parallel_clients_at_any_client_cpus():
    run = config("run.workers=3", "run.client_cpus=2").run
    assert cluster.backend_config(run)["init_args"]["num_cpus"] == 6


def test_cluster_backend_passes_no_resources_to_ray_init():
    run = config("run.ray_address=auto", "run.client_gpus=0.25", "train.device=cuda").run
    backend = cluster.backend_config(run)
    assert backend["client_resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert backend["init_args"] == {"logging_level": "error", "log_to_driver": False}


def test_client_nodes_are_the_alive_ones_with_room_for_a_client():
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 4.0}},
        {"NodeID": "c", "Alive": False, "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"NodeID": "d", "Alive": True, "Resources": {}},  # a head that hosts no work
    ]

    def ids(*sets):
        return [n["NodeID"] for n in cluster.client_nodes(nodes, config(*sets).run)]

    assert ids() == ["a", "b"]
    assert ids("run.client_gpus=0.5", "train.device=cuda") == ["a"]
    assert ids("run.client_cpus=8") == []


def test_unreachable_address_says_how_to_start_a_cluster():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"cannot connect to the Ray cluster at .*:{port}: "):
        cluster.probe_address(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"start one with `ray start --head`"):
        cluster.probe_address(f"127.0.0.1:{port}")


def test_a_run_on_a_dead_address_stops_before_loading_anything(tmp_path, monkeypatch):
    import fedspine.flower.simulation as simulation

    def never(*_args):
        raise AssertionError("resources were loaded")

    monkeypatch.setattr(simulation, "load_resources", never)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=r"cannot connect to the Ray cluster"):
        simulation.simulate(config(f"run.ray_address=127.0.0.1:{port}"), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []  # no run directory either


# ----- what every machine must have -------------------------------------------------------
def test_relative_data_or_model_paths_are_refused_on_a_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.csv").write_text("text,label\na,0\n")
    with pytest.raises(ConfigError, match=r"data\.dataset 'mine\.csv' is a relative path"):
        cluster.check_portable_paths(config("data.dataset=mine.csv"))
    with pytest.raises(ConfigError, match=r"model\.source '\./model' is a relative path"):
        cluster.check_portable_paths(config("model.source=./model"))
    cluster.check_portable_paths(config(f"data.dataset={tmp_path / 'mine.csv'}"))
    cluster.check_portable_paths(config("data.dataset=~/mine.csv"))  # each machine's home
    cluster.check_portable_paths(config())  # bundled data, packaged model


def records_json(cfg) -> str:
    """The config as a message carries it."""
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def check_file(tmp_path: Path, token: str = "t0k3n") -> str:
    path = tmp_path / cluster.CHECK_FILE
    path.write_text(token)
    return str(path)


def test_a_node_with_everything_is_ready(tmp_path):
    json_text = records_json(config())
    assert cluster.node_problems(json_text, check_file(tmp_path), "t0k3n") == []


def test_a_node_without_the_shared_run_dir_data_or_model_says_which(tmp_path):
    cfg = config(f"data.dataset={tmp_path / 'gone.csv'}", f"model.source={tmp_path / 'gone'}")
    problems = cluster.node_problems(records_json(cfg), check_file(tmp_path), "another")
    assert len(problems) == 3
    assert "is not shared with the driver" in problems[0] and "same path" in problems[0]
    assert "gone.csv does not exist on this machine" in problems[1]
    assert "does not exist on this machine" in problems[2]
    missing = cluster.node_problems(records_json(config()), str(tmp_path / "none"), "t0k3n")
    assert len(missing) == 1 and "not shared" in missing[0]


def test_a_model_dir_without_config_json_is_named(tmp_path):
    (tmp_path / "model").mkdir()
    assert "has no config.json" in cluster.model_problems(str(tmp_path / "model"))[0]
    assert cluster.model_problems("org/name") == []  # a hub id: resolved per machine


def test_a_device_refuses_to_keep_state_outside_the_run_dir(tmp_path):
    content = RecordDict(
        {records.RUN: ConfigRecord({records.STATE_DIR: str(tmp_path / "gone" / "device_state")})}
    )
    msg, context = SimpleNamespace(content=content), SimpleNamespace(node_config={})
    with pytest.raises(ConfigError, match=r"is not on .*, where this device keeps its state"):
        _state_store(msg, context, 3)
    content[records.RUN][records.STATE_DIR] = str(tmp_path / "device_state")  # run dir exists
    assert _state_store(msg, context, 3).folder == tmp_path / "device_state" / "device-3"


# ----- the torch device ----------------------------------------------------------------------
def test_cpu_is_cpu_and_auto_is_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device("cpu") == torch.device("cpu")
    assert compute_device("auto") == torch.device("cpu")


def test_auto_and_cuda_pick_the_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute_device("auto") == torch.device("cuda")
    assert compute_device("cuda") == torch.device("cuda")
    assert compute_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("cuda_build", "visible", "why"),
    [
        (None, None, "CPU-only build"),
        ("12.4", "", "CUDA_VISIBLE_DEVICES is empty"),
        ("12.4", None, "torch sees no CUDA device"),
    ],
)
def test_cuda_without_a_gpu_says_why(monkeypatch, cuda_build, visible, why):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(ConfigError, match=r"train\.device=cuda but this process .* no GPU") as err:
        compute_device("cuda")
    assert why in str(err.value) and "\n" not in str(err.value)


def fake_ray(actor_id, gpu_ids):
    """What compute_device asks Ray: inside an actor (a simulated client) or not, its GPUs."""
    context = SimpleNamespace(get_actor_id=lambda: actor_id)
    return SimpleNamespace(
        is_initialized=lambda: True,
        get_runtime_context=lambda: context,
        get_gpu_ids=lambda: gpu_ids,
    )


def test_a_client_uses_a_gpu_only_when_ray_reserved_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the machine has GPUs
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setitem(sys.modules, "ray", fake_ray("actor-1", []))
    assert compute_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"Ray reserved no GPU for this client.*client_gpus"):
        compute_device("cuda")
    monkeypatch.setitem(sys.modules, "ray", fake_ray("actor-1", [0]))
    assert compute_device("cuda") == torch.device("cuda")
    monkeypatch.setitem(sys.modules, "ray", fake_ray(None, []))  # the driver: its own GPUs
    assert compute_device("auto") == torch.device("cuda")


def test_resources_refuse_cuda_without_a_gpu_before_loading_anything(monkeypatch):
    import fedspine.resources as resources

    def never(*_args):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(resources, "load_data", never)
    with pytest.raises(ConfigError, match=r"train\.device=cuda but this process"):
        resources.build_resources(config("train.device=cuda"))


def test_batches_come_out_on_the_datas_device_and_subsets_keep_it():
    data = TokenisedData([[5, 6, 7], [8, 9]], [0, 1], 0, device="meta")  # meta: no GPU here
    part = data.subset([1, 0])
    assert part.device == "meta"
    assert {t.device.type for t in part.batch([0, 1]).values()} == {"meta"}
    cpu = TokenisedData([[5, 6, 7], [8, 9]], [0, 1], 0)
    assert cpu.batch([0, 1])["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
