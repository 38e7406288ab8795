"""Process setup for runs: offline environment and quiet library logs (the terminal is the
progress bar's)."""

from __future__ import annotations

import logging
import os
import warnings

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

QUIET_LOGGERS = ("flwr", "ray", "transformers", "datasets")


def use_offline_env() -> None:
    """Offline, quiet defaults for Flower, Ray and Hugging Face; call before importing them
    (some read their environment once, at import)."""
    os.environ.update(OFFLINE_ENV)


def quiet_logs(loggers: tuple[str, ...] = QUIET_LOGGERS) -> None:
    """Keep the terminal for the progress bar: library chatter goes only to errors."""
    import transformers  # here, not at the top: use_offline_env must be able to run first

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
