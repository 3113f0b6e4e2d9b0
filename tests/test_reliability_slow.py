"""Faults injected into real processes: kills during checkpoint writes, a tracking server lost mid-training."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from sounding import tracking
from tests.conftest import (
    SOUNDING,
    free_port,
    mlflow_server,
    prepare_in,
    run_cli,
    tiny_params,
    write_params,
)

pytestmark = pytest.mark.slow


def test_repeated_kill_9_never_leaves_a_torn_checkpoint_and_training_still_completes(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """An MLP on 540 samples spends a large share of each epoch writing its checkpoint, so kills at
    random moments land during writes. Every ``last.ckpt`` left behind must load, and the run continues."""
    epochs = 150  # each killed process gets through about 10 (kill 0-0.3 s after its first write); the rerun ends the rest
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"train.epochs": epochs}))
    prepare_in(tmp_path, params)
    rng, kills, last_epoch, last_write = random.Random(0), 0, -1, 0
    for _ in range(4):
        proc = subprocess.Popen([SOUNDING, "train", "mlp", "-q"], cwd=tmp_path, stdout=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # until this process writes a checkpoint
            stamps = [c.stat().st_mtime_ns for c in tmp_path.glob("checkpoints/mlp/*/last.ckpt")]
            if stamps and stamps[0] > last_write:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # then a random moment: ~40 ms epochs, a write in each
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        for ckpt in tmp_path.glob("checkpoints/mlp/*/last.ckpt"):
            epoch = torch.load(ckpt, weights_only=True, map_location="cpu")["epoch"]
            assert epoch >= last_epoch  # never rolled back
            last_epoch, last_write = epoch, ckpt.stat().st_mtime_ns
    assert kills >= 3 and last_epoch >= 0

    run_cli("train", "mlp", "-q", cwd=tmp_path, check=True)
    (ckpt,) = tmp_path.glob("checkpoints/mlp/*/last.ckpt")
    run_id = json.loads((ckpt.parent / "run.json").read_text())["run_id"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.logged_steps(uri, run_id, "epoch") == list(range(epochs))  # no epoch lost or repeated
    assert json.loads((tmp_path / "results" / "mlp.json").read_text())["seeds"][0]["run_id"] == run_id
    figures["faults injected"] += kills
    figures["runs checked"] += 1


def test_a_checkpoint_of_another_store_s_run_starts_a_new_run_holding_every_epoch(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """Train, then the same command against a fresh store: the checkpoint's run is not there, so a new run
    is started and given every epoch of the checkpoint's history (not an MlflowException on every rerun)."""
    write_params(tmp_path / "params.yaml", tiny_params(**{"train.epochs": 4}))
    prepare_in(tmp_path)
    for store in ("a.db", "b.db"):
        result = run_cli("train", "mlp", "-q", "-S", f"tracking.uri=sqlite:///{store}", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "does not hold: a new run" in result.stderr
    for store in ("a.db", "b.db"):
        c = tracking.client(f"sqlite:///{tmp_path / store}")
        runs = c.search_runs([c.get_experiment_by_name("sounding").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(runs[0].info.run_id, "train/loss")] == [0, 1, 2, 3]
    figures["faults injected"] += 1


def test_a_tracking_server_lost_mid_training_exits_69_and_a_rerun_once_it_is_back_logs_every_epoch(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """Fault 2 of docs/reliability.md: the MLflow server dies while a model trains. Training goes on to
    its last epoch, the command ends within the bound with exit 69 and one line saying what to do (no
    twelve-minute wait while the writer retries each queued batch in turn); once the server is back, the
    same command re-attaches to the run and logs the epochs it lacks, from the checkpoints."""
    epochs, port = 150, free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    url = f"http://127.0.0.1:{port}"
    write_params(tmp_path / "params.yaml", tiny_params(**{"tracking.uri": url, "train.epochs": epochs}))
    with mlflow_server(backend, tmp_path, port=port):
        prepare_in(tmp_path)
        training = subprocess.Popen(
            [SOUNDING, "train", "mlp", "-q"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while not list(tmp_path.glob("checkpoints/mlp/*/last.ckpt")):  # its run exists, epochs are logged
            assert time.time() < deadline and training.poll() is None, training.communicate()
            time.sleep(0.05)
    lost = time.monotonic()  # the server is gone
    out, err = training.communicate(timeout=600)
    elapsed = time.monotonic() - lost
    (ckpt,) = tmp_path.glob("checkpoints/mlp/*/last.ckpt")
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["epoch"] == epochs - 1  # it went on
    assert training.returncode == 69, out + err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: tracking server {url} stopped answering during the run (connection refused)")
    ), err
    assert elapsed < 90  # MLflow's bounded retries once, then every queued item at once
    assert not (tmp_path / "results" / "mlp.json").exists()  # nothing published without its run
    print(f"server lost: exit 69 {elapsed:.1f} s later: {err.strip().splitlines()[-1]}")

    with mlflow_server(backend, tmp_path, port=port):
        again = run_cli("train", "mlp", "-q", cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        run_id = json.loads((ckpt.parent / "run.json").read_text())["run_id"]
        assert tracking.logged_steps(url, run_id, "epoch") == list(range(epochs))  # no epoch lost
        assert tracking.client(url).get_run(run_id).info.status == "FINISHED"
        print(f"rerun with the server back: run {run_id} FINISHED, epochs 0-{epochs - 1} logged")
    assert json.loads((tmp_path / "results" / "mlp.json").read_text())["seeds"][0]["run_id"] == run_id
    figures["faults injected"] += 1
    figures["runs checked"] += 1


def test_a_disk_that_fills_up_after_training_exits_74_and_leaves_the_last_outputs_whole(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """The outputs live on a small tmpfs (checkpoints and the store elsewhere); a file fills it between two
    trainings. The second ends with exit 74 and one line, its outputs unpublished: the first run's model,
    metrics, results and plots are left whole, no stand-in is left, and the new seeds' runs are FAILED."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.decode().strip()}")
    try:
        write_params(tmp_path / "params.yaml", tiny_params(**{"train.n_seeds": 1}))
        prepare_in(tmp_path)
        outputs = ["--model-dir", "disk/models/mlp", "--metrics", "disk/metrics/mlp.json",
                   "--results", "disk/results/mlp.json", "--plots", "disk/plots/mlp"]  # fmt: skip
        run_cli("train", "mlp", "-q", *outputs, cwd=tmp_path, check=True)
        before = {p: p.read_bytes() for p in sorted(disk.rglob("*")) if p.is_file()}
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 16_384))  # 16 KiB left: less than a model
        result = run_cli("train", "mlp", "-q", *outputs, "-S", "train.epochs=2", cwd=tmp_path)
        assert result.returncode == 74, result.stdout + result.stderr[-3000:]
        assert result.stderr.startswith("error: no space left on the device writing ")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        (disk / "filler").unlink()
        assert {p: p.read_bytes() for p in sorted(disk.rglob("*")) if p.is_file()} == before
        c = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = c.search_runs([c.get_experiment_by_name("sounding").experiment_id])
        assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    figures["faults injected"] += 1
    figures["runs checked"] += len(runs)
