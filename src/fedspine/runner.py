"""Run one method in Flower's Simulation Engine, in process, and publish its run directory."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fedspine.config import Config, config_to_dict, config_to_toml
from fedspine.errors import ConfigError
from fedspine.report.progress import RunProgress
from fedspine.report.record import (
    CONFIG_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    RunDirectory,
    write_json_atomic,
    write_text_atomic,
)

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def default_run_dir(config: Config) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.run.method}"


def run_dir_path(config: Config, out: str | Path | None) -> Path:
    return Path(out) if out else default_run_dir(config)


def check_out_dir(out: Path) -> None:
    """Refuse an --out that would overwrite something, before any model or data is loaded."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory path that does not exist yet")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"output directory {out} already exists and is not empty; "
            "pass another --out or remove it"
        )


def new_run_dir(config: Config, out: str | Path | None) -> RunDirectory:
    path = run_dir_path(config, out)
    check_out_dir(path)
    try:
        run_dir = RunDirectory(path)
        write_text_atomic(run_dir.file(CONFIG_FILE), config_to_toml(config))
    except OSError as err:
        raise ConfigError(
            f"cannot create the run directory {path}: {err.strerror or err}; pass a writable --out"
        ) from None
    return run_dir


def finish_run(config: Config, run_dir: RunDirectory, summary: dict[str, Any]) -> Path:
    """Write the summary and plots into the partial dir, then publish it in one rename."""
    from fedspine.report.plots import plot_run

    write_json_atomic(run_dir.file(SUMMARY_FILE), summary)
    plot_run(run_dir.path)
    return run_dir.publish()


QUIET_LOGGERS = ("flwr", "ray", "transformers", "datasets")


def abandon_run(run_dir: RunDirectory) -> Path | None:
    """Close a failed run: keep `<out>.partial/` if a round finished, else remove it."""
    run_dir.abandon()
    rounds = run_dir.file(ROUNDS_FILE)
    if rounds.is_file() and rounds.stat().st_size > 0:
        return run_dir.path
    shutil.rmtree(run_dir.path, ignore_errors=True)
    return None


def quiet_logs(loggers: tuple[str, ...] = QUIET_LOGGERS) -> None:
    """Keep the terminal for the progress bar: library chatter goes only to errors."""
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)


def simulate(
    config: Config, out: str | Path | None = None, progress: RunProgress | None = None
) -> Path:
    """Run `config` on the Simulation Engine (one Ray actor per worker); return the run dir."""
    os.environ.update(OFFLINE_ENV)
    from fedspine.resources import load_resources

    quiet_logs()
    out = run_dir_path(config, out)
    check_out_dir(out)  # bad input fails here or in load_resources, before Ray starts
    load_resources(json.dumps(config_to_dict(config), sort_keys=True))
    from flwr.simulation import run_simulation

    from fedspine.flower.client_app import app as client_app
    from fedspine.flower.server_app import make_server_app

    run_dir = new_run_dir(config, out)
    outcome: dict[str, Any] = {}
    server_app = make_server_app(config, run_dir, outcome, progress)
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": config.run.workers,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": False,
        },
    }
    quiet_logs()  # again: importing the apps and the data stack resets library loggers
    try:
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
    return finish_run(config, run_dir, outcome["summary"])
