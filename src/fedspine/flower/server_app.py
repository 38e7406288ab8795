"""Flower ServerApp: hands the Grid to the federation driver.

`make_server_app` builds an app bound to a resolved config and run directory (in-process
simulation from the CLI and the tests); the module-level `app` serves `flwr run .`, reading
its settings from `[tool.flwr.app.config]` / `--run-config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedspine.config import Config, load_config
from fedspine.flower.federation import run_federation
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


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for `flwr run .`: settings come from the app's run config."""
    from fedspine.runner import finish_run, new_run_dir

    settings = context.run_config
    overrides = [s for s in str(settings.get("overrides", "")).split(";") if s.strip()]
    config_file = str(settings.get("config-file", "")) or None
    config = load_config(
        str(settings.get("preset", "default")),
        Path(config_file) if config_file else None,
        overrides + [f"run.method={settings.get('method', 'fedspine')}"],
    )
    run_dir = new_run_dir(config, str(settings.get("out", "")) or None)
    summary = run_federation(grid, config, run_dir)
    finish_run(config, run_dir, summary)
