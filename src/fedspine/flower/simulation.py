"""Run one method in Flower's Simulation Engine, in process, and publish its run directory.

The engine runs on a local Ray started for the run, or on the Ray cluster at `run.ray_address`
(`fedspine.cluster`: connected and checked here, before the first round).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from fedspine import cluster
from fedspine.config import Config, config_to_dict
from fedspine.errors import ConfigError
from fedspine.flower import vce_sweep
from fedspine.flower.client_app import app as client_app
from fedspine.flower.server_app import make_server_app
from fedspine.logs import quiet_logs, use_offline_env
from fedspine.report.progress import RunProgress
from fedspine.resources import load_resources
from fedspine.run_dir import (
    RunDirectory,
    abandon_run,
    check_out_dir,
    finish_run,
    new_run_dir,
    partial_path,
    run_dir_path,
)
from fedspine.server.checkpoint import load_checkpoint


def simulate(
    config: Config,
    out: str | Path | None = None,
    progress: RunProgress | None = None,
    resume: bool = False,
) -> Path:
    """Run `config` on the Simulation Engine (one Ray actor per worker); return the run dir.

    `resume`: continue the interrupted run whose `<out>.partial/` exists (see
    `run_dir.resumable_run`); it ends with the same record as an uninterrupted run.
    """
    use_offline_env()  # for library callers; the CLI already did before any import
    quiet_logs()
    if config.data.device_local:
        raise ConfigError(
            "data.device_local=true needs devices with their own data files (node config "
            "data-path): use `fedspine deploy-local` or `flwr run` on SuperNodes"
        )
    out = run_dir_path(config, out)
    check_out_dir(out)  # bad input fails here or in load_resources, before Ray starts
    address = config.run.ray_address
    if address:
        cluster.check_portable_paths(config)
        cluster.probe_address(address)
    load_resources(json.dumps(config_to_dict(config), sort_keys=True))
    if resume:  # a bad checkpoint fails here, before Ray starts, and the run stays as it was
        load_checkpoint(partial_path(out), config)
    run_dir = RunDirectory(out, reopen=True) if resume else new_run_dir(config, out)
    outcome: dict[str, Any] = {}
    engine_stopped = threading.Event()  # set once the engine is gone: see GridChannel
    server_app = make_server_app(config, run_dir, outcome, progress, resume, engine_stopped)
    backend = cluster.backend_config(config.run)
    quiet_logs()  # again: importing the apps and the data stack resets library loggers
    vce_sweep.install()  # the engine's message sweep, per pending message (see vce_sweep)
    try:
        if address:  # Flower keeps an existing Ray connection (and shuts it down at the end)
            cluster.connect_cluster(address)
            cluster.check_cluster(config, run_dir.path)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=config.fleet.num_devices,
            backend_config=backend,
        )
        if "error" in outcome:
            raise outcome["error"]
        if "summary" not in outcome:
            raise RuntimeError("the simulation stopped before the run finished (see the log above)")
    except BaseException:
        abandon_run(run_dir)
        raise
    finally:
        engine_stopped.set()  # a server thread still waiting for replies ends
        if address:
            cluster.disconnect()
    return finish_run(config, run_dir, outcome["summary"])
