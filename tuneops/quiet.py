"""Defaults that keep runs offline and their logs readable; the user's environment wins.

Applied at the entry points (CLI, flows, tests) before the libraries are imported.
"""

from __future__ import annotations

import os
import warnings

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # nothing contacts a model hub at run time
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # `tuneops run` without a server starts a temporary Prefect server; its 20 s default
    # wait failed the run on a busy 2-core machine (load 20) before any step ran.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # MLflow cannot tell its two local dataset-source classes apart for a plain path.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
