"""Scaling out: ranks from SLURM and torchrun, DDP through the real CLI, local tuning workers per GPU, the
MLflow client configured from the environment, and a round trip through `mlflow server` on PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from sounding.config import load_params
from sounding.errors import BadInput
from sounding.training import make_trainer, process_rank
from tests.conftest import (
    REPO,
    SOUNDING,
    free_port,
    mlflow_server,
    prepare_in,
    run_cli,
    tiny_params,
    write_params,
)

BIN = Path(sys.executable).parent

# What `srun --nodes=2 --ntasks-per-node=4` sets for its task 5: the second task on the second node.
SLURM_TASK_5 = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NAME": "sounding-train",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_NODELIST": "gpu[07-08]",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
}
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
LAUNCHER_VARIABLES += ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "JSM_NAMESPACE_RANK")


def _environment(variables: dict[str, str]) -> mock._patch_dict:
    """Exactly these launcher variables (SLURM_*, torchrun's) and no others; everything restored after,
    including what Lightning adds itself (MASTER_ADDR, MASTER_PORT)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in LAUNCHER_VARIABLES
    }
    return mock.patch.dict(os.environ, {**clean, **variables}, clear=True)


def _ddp(**overrides: object):
    base = {"compute.accelerator": "cpu", "compute.strategy": "ddp"}
    return tiny_params(**{**base, **overrides})


def test_slurm_variables_give_the_global_rank_local_rank_node_rank_and_world_size() -> None:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    params = _ddp(**{"compute.devices": 4, "compute.num_nodes": 2})
    with _environment(SLURM_TASK_5):
        trainer = make_trainer(params, [])
        env = trainer.strategy.cluster_environment
        assert isinstance(env, SLURMEnvironment)
        assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (
            5,
            1,
            1,
            8,
        )
        assert not trainer.is_global_zero
        assert env.main_address == "gpu07"  # first node of the allocation hosts the rendezvous
        assert env.main_port == 15000 + 3456  # derived from the job id, the same on every task
        assert process_rank(params) == (5, 8)
    with _environment({**SLURM_TASK_5, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}):
        assert process_rank(params) == (0, 8)


def test_a_compute_section_unlike_the_slurm_allocation_is_bad_input_before_training() -> None:
    with _environment(SLURM_TASK_5), pytest.raises(BadInput, match="ntasks-per-node=4"):
        process_rank(_ddp(**{"compute.devices": 2, "compute.num_nodes": 2}))


def test_srun_ntasks_without_ntasks_per_node_is_bad_input() -> None:
    without = {k: v for k, v in SLURM_TASK_5.items() if k != "SLURM_NTASKS_PER_NODE"}
    with _environment(without), pytest.raises(BadInput, match="ntasks-per-node"):
        process_rank(_ddp(**{"compute.devices": 4, "compute.num_nodes": 2}))


def test_an_interactive_slurm_shell_is_not_taken_for_a_distributed_job() -> None:
    with _environment({**SLURM_TASK_5, "SLURM_JOB_NAME": "interactive"}):
        assert process_rank(tiny_params(**{"compute.accelerator": "cpu"})) == (0, 1)


def test_a_tuning_worker_started_by_srun_trains_on_one_device_without_a_process_group() -> None:
    # tune.sbatch: every srun task is an independent Optuna worker; its trials must not join the others.
    with _environment(SLURM_TASK_5):
        trainer = make_trainer(tiny_params(**{"compute.accelerator": "cpu"}), [])
        assert (trainer.world_size, trainer.global_rank, trainer.is_global_zero) == (1, 0, True)
        assert type(trainer.strategy).__name__ == "SingleDeviceStrategy"


def test_several_processes_without_a_launcher_are_refused_outside_the_cli() -> None:
    # Lightning would re-execute this process's command (here pytest, elsewhere a Prefect flow) per device.
    with _environment({}), pytest.raises(BadInput, match="torchrun or srun"):
        process_rank(_ddp(**{"compute.devices": 2}))


def test_torchrun_variables_give_the_rank() -> None:
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}
    torchrun |= {"TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with _environment(torchrun):
        assert process_rank(_ddp(**{"compute.devices": 2})) == (1, 2)
        with pytest.raises(BadInput, match="world size"):
            process_rank(_ddp(**{"compute.devices": 4}))  # --nproc_per_node=2
        with pytest.raises(BadInput, match="torchrun started 2 processes"):
            process_rank(tiny_params(**{"compute.accelerator": "cpu"}))  # would train twice, alone
    with _environment({}):
        assert process_rank(tiny_params(**{"compute.accelerator": "cpu"})) == (0, 1)


def test_local_worker_processes_are_dealt_the_visible_gpus_round_robin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sounding.parallel import worker_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert worker_gpus(tiny_params(), 3) == ["2", "3", "2"]
    assert worker_gpus(tiny_params(**{"compute.accelerator": "cpu"}), 2) == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_gpus(tiny_params(), 2) == [None, None]  # no GPU visible: the workers inherit


def test_mlflow_environment_variables_configure_the_client_and_an_override_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_params(tmp_path / "params.yaml", tiny_params())
    assert load_params(path).tracking.uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cluster")
    params = load_params(path)
    assert (params.tracking.uri, params.tracking.experiment) == ("http://127.0.0.1:5999", "cluster")
    assert load_params(path, ["tracking.uri=sqlite:///x.db"]).tracking.uri == "sqlite:///x.db"


@pytest.mark.fresh_store
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_train_on_a_gpu_that_is_not_there_exits_2_before_tracking(tmp_path: Path, prepared: Path) -> None:
    write_params(tmp_path / "params.yaml", tiny_params())
    result = run_cli("train", "cnn", "--data", str(prepared), "-S", "compute.accelerator=gpu", cwd=tmp_path)
    assert result.returncode == 2 and "compute:" in result.stderr, result.stderr
    assert not (tmp_path / "mlflow.db").exists()


# --- slow: real processes -------------------------------------------------------------------------------


def _torchrun_cmd(*args: str) -> list[str]:
    """`torchrun --nproc_per_node=2` of the real CLI, rendezvous and gloo on the loopback interface."""
    rendezvous = ["--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *rendezvous, SOUNDING, *args]


def _loopback_env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")


def _torchrun_train(root: Path) -> subprocess.CompletedProcess:
    """`sounding train cnn` under torchrun in ``root``, run to the end."""
    return subprocess.run(
        _torchrun_cmd("train", "cnn", "-q"),
        cwd=root,
        capture_output=True,
        text=True,
        env=_loopback_env(),
        timeout=300,
    )


def _ddp_root(tmp_path: Path, **overrides: object) -> Path:
    write_params(tmp_path / "params.yaml", _ddp(**{"compute.devices": 2, **overrides}))
    prepare_in(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_a_ddp_fit_steps_like_a_single_process_with_as_many_batches_on_each_rank(tmp_path: Path) -> None:
    """Two gloo processes: Lightning's distributed sampler deals each rank the same number of batches
    (padded when the training set does not split evenly), and ``global_step`` counts optimizer steps."""
    root = _ddp_root(tmp_path, **{"data.mnist1d.num_samples": 610, "train.epochs": 2})
    cmd = _torchrun_cmd("-")[:-2] + ["-m", "tests.ddp_probe"]  # torchrun of a module instead of the CLI
    result = subprocess.run(
        cmd,
        cwd=root,
        capture_output=True,
        text=True,
        env=_loopback_env() | {"PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    ranks = [json.loads((root / f"probe-{rank}.json").read_text()) for rank in (0, 1)]
    n_train = len(np.load(root / "data/prepared/train.npz")["y"])
    assert n_train % 2 == 1  # an odd training set: one rank's shard is padded by one sample
    per_rank = math.ceil(math.ceil(n_train / 2) / 100)  # batches of 100 over each rank's shard
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert [r["batches"] for r in ranks] == [2 * per_rank] * 2
    assert [r["global_step"] for r in ranks] == [2 * per_rank] * 2


def _rank_lines(stdout: str) -> dict[int, list[str]]:
    """Each rank's report, without its ``[rank R/2]`` prefix."""
    lines: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("[rank "):
            prefix, _, rest = line.partition("] ")
            lines.setdefault(int(prefix.removeprefix("[rank ").split("/")[0]), []).append(rest)
    return lines


def _single_run(root: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # one MLflow run, not one per rank
    return client, runs[0]


@pytest.mark.slow
def test_torchrun_ddp_of_the_cli_trains_to_the_end_with_one_run_one_checkpoint_and_agreeing_ranks(
    tmp_path: Path,
) -> None:
    root = _ddp_root(tmp_path)
    result = _torchrun_train(root)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    ranks = _rank_lines(result.stdout)
    assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1], ranks  # every metric agrees across ranks
    assert "resumed after 0 epoch(s)" in ranks[0][1]

    metrics = json.loads((root / "results/cnn.json").read_text())
    assert metrics["processes"] == 2 and metrics["epochs"] == 3 and metrics["seeds"][0]["epochs"] == 3
    seed = metrics["seeds"][0]
    assert f"test/acc {seed['test/acc']:.6g}, test/loss {seed['test/loss']:.6g}" in ranks[1][1]

    client, run = _single_run(root)
    assert run.info.status == "FINISHED" and run.data.metrics["test/acc"] == seed["test/acc"]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/acc")) == [0, 1, 2]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.ckpt"]
    # One checkpoint folder, rank zero's: best.ckpt and last.ckpt (Lightning's ModelCheckpoint: the best
    # val/acc, and what a rerun resumes), model.ckpt (the selected weights), nothing else.
    written = sorted(p.relative_to(root).as_posix() for p in (root / "checkpoints").rglob("*") if p.is_file())
    run_dir = written[0].rsplit("/", 1)[0]
    names = ["best.ckpt", "last.ckpt", "model.ckpt", "run.json"]
    assert written == [f"{run_dir}/{name}" for name in names], written
    assert sorted(p.name for p in (root / "models/cnn").iterdir()) == [
        "config.json",
        "model.ckpt",
        "model.safetensors",
    ]


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_from_its_checkpoint_in_the_same_mlflow_run(tmp_path: Path) -> None:
    epochs = 40
    root = _ddp_root(tmp_path, **{"train.epochs": epochs})  # kill after epoch 3
    first = subprocess.Popen(
        _torchrun_cmd("train", "cnn", "-q"),
        cwd=root,
        env=_loopback_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
            last = (
                next((root / "checkpoints").rglob("last.ckpt"), None)
                if (root / "checkpoints").exists()
                else None
            )
            if last is not None:
                done = torch.load(last, weights_only=True, map_location="cpu")["epoch"] + 1
                if done >= 3:
                    break
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and both ranks, mid-training
        first.wait()
    assert 3 <= done < epochs, f"not killed mid-training (epochs done: {done})"

    second = _torchrun_train(root)
    assert second.returncode == 0, second.stdout + second.stderr[-4000:]
    ranks = _rank_lines(second.stdout)
    assert ranks[0] == ranks[1], ranks
    resumed = int(ranks[0][1].rsplit("resumed after ", 1)[1].split()[0])
    assert resumed >= done  # both ranks continued from the checkpoint, not from epoch 0

    client, run = _single_run(root)  # the rerun re-attached to the killed run
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert sorted(steps) == list(range(epochs)), steps  # every epoch logged exactly once
    assert json.loads((root / "results/cnn.json").read_text())["seeds"][0]["epochs"] == epochs


@pytest.mark.slow
def test_train_register_predict_round_trip_through_mlflow_server_on_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts = tmp_path / "server-artifacts"
    with mlflow_server(postgres_url, tmp_path) as (url, _):
        root = tmp_path / "client"
        root.mkdir()
        # Train and register configured from params; predict from MLflow's environment variable.
        write_params(root / "params.yaml", tiny_params(**{"tracking.uri": url, "train.archs": ["cnn"]}))
        for args in (["prepare"], ["train", "cnn", "-q"], ["register"]):
            result = run_cli(*args, cwd=root)
            assert result.returncode == 0, result.stdout + result.stderr[-4000:]
        write_params(root / "params.yaml", tiny_params(**{"train.archs": ["cnn"]}))  # back to sqlite
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        x = np.load(root / "data/prepared/test.npz")["x"][:5]
        np.savez(root / "batch.npz", x=x)
        args = (
            "predict",
            "--model",
            "models:/sounding-cnn@champion",
            "--input",
            "batch.npz",
            "--output",
            "p.csv",
        )
        result = run_cli(*args, cwd=root)
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url, registry_uri=url)
        assert client.get_model_version_by_alias("sounding-cnn", "champion").version == "1"
        (run,) = client.search_runs([client.get_experiment_by_name("sounding").experiment_id])
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "train"

    rows = np.loadtxt(root / "p.csv", delimiter=",", skiprows=1)
    assert rows.shape == (5, 2 + 10) and np.allclose(rows[:, 2:].sum(1), 1, atol=1e-4)
    promotion = json.loads((root / "reports/promotion.json").read_text())
    assert [d["decision"] for d in promotion["decisions"]] == ["promote", "promote"]  # cnn, then best
    # Everything went through the server: PostgreSQL holds runs and registry, its folder the files.
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()
    assert any(p.name == "model.safetensors" for p in artifacts.rglob("*"))
