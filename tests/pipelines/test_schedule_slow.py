"""A real Prefect server on a free loopback port, the deployment served by `sounding schedule`, and runs
triggered with `prefect deployment run`: two at once run one after the other, and train once (the second
finds every stage up to date)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

from pipelines.server import prefect_server
from sounding import tracking
from tests.conftest import SOUNDING, copy_repo, write_params
from tests.pipelines.conftest import flow_params

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trigger(env: dict, deadline: float) -> UUID:
    """`prefect deployment run`, retried until the served deployment is registered."""
    while True:
        result = subprocess.run(
            [PREFECT, "deployment", "run", "retrain/nightly"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        found = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
        if found:
            return UUID(found.group(1))
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(1)


def test_served_deployment_runs_on_trigger_one_at_a_time(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workspace = copy_repo(tmp_path / "workspace")
    write_params(workspace / "params.yaml", flow_params(**{"train.archs": ["linear"]}))
    home = tmp_path / "prefect-home"
    with prefect_server(_free_port(), home=home) as url:
        env = dict(os.environ, PREFECT_API_URL=url, PREFECT_HOME=str(home), PYTHONWARNINGS="ignore")
        with open(tmp_path / "serve.log", "wb") as log:
            served = subprocess.Popen(
                [SOUNDING, "schedule", "--cron", "0 3 * * *", "--name", "nightly", "--arch", "linear"],
                cwd=workspace,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            runs = [_trigger(env, deadline), _trigger(env, deadline)]
            with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
                deadline = time.monotonic() + 900
                while True:
                    flow_runs = [client.read_flow_run(r) for r in runs]
                    if all(f.state.is_final() for f in flow_runs):
                        break
                    assert time.monotonic() < deadline, [f.state for f in flow_runs]
                    assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    time.sleep(2)
        finally:
            served.terminate()
            served.wait(timeout=60)
    log = (tmp_path / "serve.log").read_text()
    assert all(f.state.is_completed() for f in flow_runs), [f.state for f in flow_runs] + [log[-3000:]]
    first, second = sorted(flow_runs, key=lambda f: f.start_time)
    assert second.start_time >= first.end_time  # the second waited for its concurrency slot
    c = tracking.client(f"sqlite:///{workspace / 'mlflow.db'}")
    ids = [e.experiment_id for e in c.search_experiments()]
    trained = c.search_runs(ids, "tags.stage = 'train'")
    assert len(trained) == 1  # the second run found every stage up to date
    assert trained[0].data.tags["prefect.deployment"] == "nightly"
    assert trained[0].data.tags["prefect.flow_run_id"] == str(first.id)
