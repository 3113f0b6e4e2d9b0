"""Concurrency with real processes: two pipeline runs on one workspace, and four trainings logging to one
MLflow server at once. (Two retraining flows at once: tests/pipelines.)"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from sounding.data.prepare import verify
from sounding.repro import _stage_holders
from tests.conftest import (
    SOUNDING,
    copy_repo,
    mlflow_server,
    prepare_in,
    run_cli,
    run_dvc,
    tiny_params,
    write_params,
)

pytestmark = pytest.mark.slow


def test_a_second_pipeline_run_on_one_workspace_fails_fast_and_the_first_completes(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """The first run's `prepare` generates 30,000 MNIST-1D samples (several seconds): the second run and a
    plain `dvc repro` start while it runs."""
    root = copy_repo(tmp_path / "repo")
    write_params(root / "params.yaml", tiny_params(**{"data.mnist1d.num_samples": 30_000}))
    pipes = {"cwd": root, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen([SOUNDING, "repro", "prepare"], **pipes)
    try:
        deadline = time.monotonic() + 300
        while not _stage_holders(root / ".dvc" / "tmp" / "rwlock"):  # until its stage runs
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        ours = run_cli("repro", "prepare", cwd=root)
        theirs = run_dvc("repro", "prepare", cwd=root, timeout=120)
        assert first.poll() is None, "the first run ended before the second started: nothing was tested"
    finally:
        out, err = first.communicate(timeout=600)
    figures["concurrent runs refused"] += 2
    assert ours.returncode == 2 and "Traceback" not in ours.stderr
    # Refused by the first run's hold on the workspace, naming it (its PID and command).
    assert f"another Sounding command is writing in {root} (PID {first.pid}: sounding repro prepare)" in (
        ours.stderr
    )
    assert theirs.returncode != 0 and "rwlock" in theirs.stderr  # plain dvc: its own error
    assert first.returncode == 0, out[-3000:] + err[-3000:]
    verify(root / "data" / "prepared")
    status = run_dvc("status", "prepare", cwd=root)
    assert status.stdout.strip().startswith("Data and pipelines are up to date"), status.stdout


def test_four_trainings_logging_to_one_mlflow_server_lose_no_metric(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """Four `sounding train` processes at once against one `mlflow server` on a sqlite store: every run
    FINISHED with every epoch's metrics, and no "database is locked" anywhere."""
    epochs = 10
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as (url, log):
        write_params(tmp_path / "params.yaml", tiny_params(**{"tracking.uri": url, "train.epochs": epochs}))
        prepare_in(tmp_path)
        jobs = []
        for seed in range(4):
            work = tmp_path / f"job-{seed}"
            work.mkdir()
            args = [SOUNDING, "train", "linear", "-q", "--data", str(tmp_path / "data" / "prepared"),
                    "--params", str(tmp_path / "params.yaml"), "-S", f"seed={seed}"]  # fmt: skip
            jobs.append(
                subprocess.Popen(args, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        results = [(job.wait(timeout=600), *job.communicate()) for job in jobs]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url)
        runs = client.search_runs([client.get_experiment_by_name("sounding").experiment_id])
        histories = {
            r.info.run_id: {k: sorted(m.step for m in client.get_metric_history(r.info.run_id, k))
                            for k in ("train/loss", "val/loss", "val/acc")}
            for r in runs
        }  # fmt: skip
    server_log = log.read_text()
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-3000:]
        assert "database is locked" not in err
    assert "database is locked" not in server_log
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for run_id, keys in histories.items():
        assert all(steps == list(range(epochs)) for steps in keys.values()), (run_id, keys)
    figures["runs checked"] += len(runs)
    figures["metric values checked"] += sum(len(s) for keys in histories.values() for s in keys.values())
