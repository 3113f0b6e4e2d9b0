"""One Prefect test server for the whole session, and the tiny params the flow runs on."""

from __future__ import annotations

import pytest

from sounding.config import Params
from tests.conftest import tiny_params


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database for every flow run of the session (started once: ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def flow_params(**overrides: object) -> Params:
    """``tiny_params`` shrunk further for whole-flow runs: two architectures, two tuning trials of two
    epochs, transfer of the MLP at two budgets; tasks one at a time in the test's process (monkeypatches reach
    them), retries without delay."""
    base = {
        "train.archs": ["linear", "cnn"],
        "train.epochs": 2,
        "tune.n_trials": 2,
        "tune.epochs": 2,
        "transfer.archs": ["mlp"],
        "transfer.budgets": [0.5, 1.0],
        "retrain.task_runner": "threads",
        "retrain.max_workers": 1,
        "retrain.retry_delay_s": 0,
    }
    base.update(overrides)
    return tiny_params(**base)
