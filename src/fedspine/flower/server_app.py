"""Flower ServerApp: hands the Grid to the federation driver.

`make_server_app` builds an app bound to a resolved config and run directory (in-process
simulation from the CLI and the tests); the module-level `app` serves `flwr run .`, reading
its settings from `[tool.flwr.app.config]` / `--run-config`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedspine.config import Config, config_to_dict, load_config
from fedspine.errors import ConfigError, FedspineError
from fedspine.flower.federation import run_federation, wait_for_nodes
from fedspine.report.progress import RunProgress
from fedspine.report.record import RunDirectory


def make_server_app(
    config: Config,
    run_dir: RunDirectory,
    outcome: dict[str, Any],
    progress: RunProgress | None = None,
) -> ServerApp:
    """A ServerApp that runs the federation and leaves the summary (or the error) in `outcome`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["summary"] = run_federation(grid, config, run_dir, progress)
        except BaseException as err:  # re-raised by the runner after the simulation stops
            outcome["error"] = err

    return app


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[Config, Path]:
    """The resolved config and absolute run directory from `flwr run`'s run config.

    `overrides` holds `--set` style `section.key=value` pairs separated by ';'. A relative
    `out` is resolved in the ServerApp's working directory (the SuperLink's, not the caller's
    of `flwr run`), so the absolute path is logged.
    """
    from fedspine.runner import run_dir_path

    overrides = [s.strip() for s in str(run_config.get("overrides", "")).split(";") if s.strip()]
    config_file = str(run_config.get("config-file", "")).strip()
    config = load_config(
        str(run_config.get("preset", "default")),
        Path(config_file).expanduser() if config_file else None,
        overrides + [f"run.method={run_config.get('method', 'fedspine')}"],
    )
    out = str(run_config.get("out", "")).strip()
    return config, run_dir_path(config, Path(out).expanduser() if out else None).absolute()


def check_fleet_size(grid: Grid, num_devices: int) -> None:
    """Each SuperNode is one simulated device: their number must be fleet.num_devices."""
    nodes = wait_for_nodes(grid, num_devices)
    if len(nodes) != num_devices:
        raise ConfigError(
            f"fleet.num_devices is {num_devices} but {len(nodes)} SuperNodes are connected; "
            f"start {num_devices} SuperNodes (simulation: --federation-config "
            f'"num-supernodes={num_devices}") or pass overrides="fleet.num_devices={len(nodes)}"'
        )


def prepare_run(grid: Grid, run_config: Mapping[str, Any]) -> tuple[Config, Path]:
    """Every check that can fail on bad input, before a run directory exists."""
    from fedspine.resources import load_resources
    from fedspine.runner import check_out_dir

    config, out = config_from_run_config(run_config)
    check_out_dir(out)
    load_resources(json.dumps(config_to_dict(config), sort_keys=True))
    check_fleet_size(grid, config.fleet.num_devices)
    return config, out


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for `flwr run .`: settings come from the app's run config.

    A user error is logged as one `fedspine error:` line and re-raised so the run is marked
    failed; a run that fails midway keeps its finished rounds in `<out>.partial/`.
    """
    from fedspine.runner import QUIET_LOGGERS, abandon_run, finish_run, new_run_dir, quiet_logs

    quiet_logs(tuple(name for name in QUIET_LOGGERS if name != "flwr"))  # keep Flower's log
    try:
        config, out = prepare_run(grid, context.run_config)
    except FedspineError as err:
        log(ERROR, "fedspine error: %s", err)
        raise
    log(
        INFO,
        "fedspine: %s on %d devices, writing %s",
        config.run.method,
        config.fleet.num_devices,
        out,
    )
    run_dir = new_run_dir(config, out)
    try:
        summary = run_federation(grid, config, run_dir)
    except BaseException:
        kept = abandon_run(run_dir)
        log(
            ERROR,
            "fedspine: run failed; %s",
            f"finished rounds kept in {kept}" if kept else "no round had finished, nothing kept",
        )
        raise
    published = finish_run(config, run_dir, summary)
    log(
        INFO,
        "fedspine: done, final accuracy %s, run directory %s",
        summary.get("final_accuracy"),
        published,
    )
