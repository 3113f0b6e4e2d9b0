"""A real Prefect server on a free loopback port, the deployment served by `sounding schedule`, and runs
triggered with `prefect deployment run`: two at once run one after the other; a run past its timeout ends
failed, its notification is sent, and the run queued behind it starts. (The flow on the project's own
pipeline, and the Prefect tags of its MLflow runs, are in tests/test_pipeline_slow.py.)"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import pytest

from pipelines.server import prefect_server
from tests.conftest import SOUNDING, free_port
from tests.pipelines.conftest import dvc_repo, flow_params

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


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


@contextmanager
def served(workspace: Path, tmp_path: Path, *args: str) -> Iterator[tuple[dict, str]]:
    """A Prefect server and `sounding schedule ARGS` serving the deployment retrain/nightly of
    ``workspace``: the environment that reaches the server, and its URL."""
    home = tmp_path / "prefect-home"
    with prefect_server(free_port(), home=home) as url:
        env = dict(os.environ, PREFECT_API_URL=url, PREFECT_HOME=str(home), PYTHONWARNINGS="ignore")
        with open(tmp_path / "serve.log", "wb") as log:
            serving = subprocess.Popen(
                [SOUNDING, "schedule", "--cron", "0 3 * * *", "--name", "nightly", *args],
                cwd=workspace,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            # The UI (`make scheduler PREFECT_PORT=…`) calls the API of this server, not the default port's.
            with urllib.request.urlopen(url.removesuffix("/api") + "/ui-settings", timeout=10) as answer:
                assert json.load(answer)["api_url"] == url
            yield env, url
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            serving.terminate()
            serving.wait(timeout=60)


def run_triggered(env: dict, url: str, count: int, timeout_s: float = 900) -> list:
    """Trigger the deployment ``count`` times at once; its flow runs once all have ended, first started
    first."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + 120
    runs = [_trigger(env, deadline) for _ in range(count)]
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout_s
        while True:
            flow_runs = [client.read_flow_run(r) for r in runs]
            if all(f.state.is_final() for f in flow_runs):
                return sorted(flow_runs, key=lambda f: f.start_time)
            assert time.monotonic() < deadline, [f.state for f in flow_runs]
            time.sleep(2)


def test_a_run_past_its_timeout_fails_tells_the_webhook_and_the_queued_run_starts(
    tmp_path: Path, webhook: tuple[str, list[dict]]
) -> None:
    url, posted = webhook
    # Hangs on its first run (past the timeout), succeeds on the next.
    hangs_once = "if [ -e hung ]; then echo ok > out.txt; else touch hung; exec sleep 600; fi"
    workspace = dvc_repo(
        tmp_path / "workspace",
        {"work": {"cmd": hangs_once, "outs": ["out.txt"]}},
        flow_params(**{"retrain.timeout_s": 20, "retrain.notify": url}),
    )
    with served(workspace, tmp_path) as (env, api):
        timed_out, queued = run_triggered(env, api, 2, timeout_s=300)
    log = (tmp_path / "serve.log").read_text()[-3000:]
    assert (
        timed_out.state.is_failed() and "longer than retrain.timeout_s (20 s)" in timed_out.state.message
    ), log
    assert queued.state.is_completed(), log
    assert queued.start_time >= timed_out.end_time
    assert (workspace / "out.txt").read_text() == "ok\n"
    assert [p["subject"] for p in posted] == [f"Sounding retrain {timed_out.name}: TimedOut"]
    assert "longer than retrain.timeout_s" in posted[0]["text"]


def test_make_scheduler_stopped_by_sigterm_stops_its_command_and_its_prefect_server(tmp_path: Path) -> None:
    port, home = free_port(), tmp_path / "prefect-home"
    env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    )
    marker = tmp_path / "command-ran"
    command = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(600)"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "pipelines.server", "--port", str(port), "--", sys.executable, "-c", command],
        cwd=Path(__file__).parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():  # the server answered and the command started
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.2)
    launcher.terminate()
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode != 0, out  # the command ended by the signal, not by itself
    # The server is gone: nothing listens on its port. (Binding the port again is no test: the server's
    # closed connections may hold it in TIME_WAIT for a minute.)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
