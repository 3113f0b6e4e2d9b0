"""Sounding: train, tune, compare and ship neural-network architectures reproducibly."""

import os

__version__ = "0.1.0"

# Offline and quiet by default, for users and tests alike; an explicit setting in the environment wins.
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_key, _value)
