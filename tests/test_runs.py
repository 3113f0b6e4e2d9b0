"""`sounding runs cleanup`: RUNNING runs left by killed processes are closed KILLED, live ones are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sounding import tracking
from sounding.cli import app
from sounding.config import Params
from sounding.errors import BadInput
from sounding.runs import find_stale, parse_duration
from tests.conftest import REPO, run_cli, write_params

HOUR_MS = 3_600_000


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                               ("1h30m", 5400), ("0.5h", 1800)])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2", "2x", "h", "-1h", "0h", "2h 30m", "", "1h30"])
def test_a_bad_duration_is_refused_naming_the_allowed_forms(text: str) -> None:
    with pytest.raises(BadInput, match=r"expected a positive number and a unit, e\.g\. 90s, 30m, 2h, 1d"):
        parse_duration(text)


@pytest.mark.fresh_store
def test_a_bad_duration_exits_2_before_touching_the_store(tmp_path: Path) -> None:
    result = run_cli("runs", "cleanup", "--older-than", "2 hours", "--params", str(REPO / "params.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--older-than '2 hours' is not a duration" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def _started(client, experiment_id: str, name: str, start_ms: int, metric_ms: int | None = None,
             parent: str | None = None) -> str:  # fmt: skip
    """A RUNNING run as a process leaves it: started at ``start_ms``, a metric at ``metric_ms``, never ended."""
    tags = {"mlflow.parentRunId": parent} if parent else {}
    run_id = client.create_run(experiment_id, start_time=start_ms, run_name=name, tags=tags).info.run_id
    if metric_ms is not None:
        client.log_metric(run_id, "train/loss", 0.5, timestamp=metric_ms, step=0)
    return run_id


def test_cleanup_closes_runs_idle_past_the_age_and_leaves_live_ones(
    params: Params, tmp_path: Path, figures: Counter[str]
) -> None:
    write_params(tmp_path / "params.yaml", params)
    uri = params.tracking.uri
    client = tracking.client(uri)
    now = int(time.time() * 1000)
    train, tune = tracking.experiment_id(uri, "sounding"), tracking.experiment_id(uri, "tuning")
    died = _started(client, train, "cnn-seed42", now - 5 * HOUR_MS, now - 3 * HOUR_MS)  # died 3 h ago
    study = _started(client, tune, "study", now - 4 * HOUR_MS)  # a silent parent whose trial died too
    trial = _started(client, tune, "trial-0", now - 4 * HOUR_MS, now - 3 * HOUR_MS, parent=study)
    stale = {died, study, trial}
    live = {
        _started(client, train, "mlp-seed42", now - 5 * HOUR_MS, now - 60_000),  # started long ago, logging
        _started(client, train, "rnn-seed42", now - 60_000),  # just started
    }
    parent = _started(client, tune, "study-live", now - 5 * HOUR_MS)  # silent parent, a trial logging now
    live |= {parent, _started(client, tune, "trial-1", now - 5 * HOUR_MS, now - 60_000, parent=parent)}
    finished = _started(client, train, "done", now - 9 * HOUR_MS)
    client.set_terminated(finished, "FINISHED")

    dry = CliRunner().invoke(app, ["runs", "cleanup", "--older-than", "2h", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("would mark KILLED: ") == 3 and "nothing changed" in dry.output
    assert all(client.get_run(r).info.status == "RUNNING" for r in stale | live)

    done = CliRunner().invoke(app, ["runs", "cleanup", "--older-than", "2h"])
    assert done.exit_code == 0, done.output
    assert "3 of 7 RUNNING run(s) idle for more than 2h; 3 marked KILLED" in done.output
    for run_id in stale:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run_id in done.output
        assert run.info.end_time < now - 2 * HOUR_MS  # ended at its last activity, not at cleanup time
    assert all(client.get_run(r).info.status == "RUNNING" for r in live)
    assert client.get_run(finished).info.status == "FINISHED"
    figures["runs checked"] += len(stale | live) + 1


def test_a_run_left_running_by_kill_9_is_found_stale(tmp_path: Path, figures: Counter[str]) -> None:
    """A real process opens a tracked run, logs an epoch and is killed with SIGKILL: its run stays RUNNING
    (no handler can run), and is stale once its last metric is older than the age."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys, time; from sounding import tracking; from sounding.config import Params\n"
        f"p = Params().with_overrides({{'tracking.uri': {uri!r}}})\n"
        "with tracking.tracked_run(p, 'cnn-seed42', {}) as run_id:\n"
        "    tracking.log_metrics(p.tracking.uri, run_id, {'train/loss': 1.0}, step=0)\n"
        "    print(run_id, flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and run_id
    client = tracking.client(uri)
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"
    last = client.get_metric_history(run_id, "train/loss")[0].timestamp
    assert find_stale(client, 3600, now_ms=last + 30 * 60_000)[0] == []  # idle 30 min: kept
    stale, checked = find_stale(client, 3600, now_ms=last + 2 * HOUR_MS)
    assert [s.run_id for s in stale] == [run_id] and checked == 1
    figures["faults injected"] += 1
    figures["runs checked"] += 1
