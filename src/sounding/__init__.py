"""Sounding: train, tune, compare and ship neural-network architectures reproducibly."""

import os

__version__ = "0.1.0"

# Offline and quiet by default, for users and tests alike; an explicit setting in the environment wins.
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow's INFO lines (creating a store's tables, validating an input example) and its "Downloading
    # artifacts" bars (drawn when it checks a logged model's input example) are noise in a pipeline's
    # log; its warnings and errors still show. MLFLOW_LOGGING_LEVEL=INFO brings the lines back.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_key, _value)
