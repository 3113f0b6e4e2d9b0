"""End to end, as a user runs it: `dvc repro` on tiny params, DVC remotes, and kill -9 resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sounding import tracking
from sounding.config import load_params
from tests.conftest import (
    copy_repo,
    prepare_in,
    run_cli,
    run_dvc,
    served_predictions,
    tiny_params,
    write_params,
)

pytestmark = pytest.mark.slow
BIN = str(Path(sys.executable).parent)
ARCHS = ("cnn", "fcn")
"""The architectures the pipeline trains here."""
OVERRIDES = {
    # Two architectures (each has its own fast tests): the CNN judges the GAN, the FCN takes any length.
    "train.archs": list(ARCHS),
    "train.epochs": 2,
    "train.n_seeds": 2,
    "depth.depths": [2, 4],
    "depth.inits": ["default", "kaiming"],
    "depth.residual": [False],  # 4 configurations; the study's own tests cover the rest
    "depth.clip": [0.0],
    "depth.epochs": 1,
    "gan.epochs": 2,
    "gan.samples_per_class": 5,
}
"""The tiny params the pipeline runs on here (2 epochs, 2 seeds, 600 samples)."""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's pipeline reproduced once on tiny params (2 epochs, 2 seeds, 600 samples)."""
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    write_params(root / "params.yaml", tiny_params(**OVERRIDES))
    # Every Python process of every stage lists what it imports on stderr (PYTHONPROFILEIMPORTTIME), in
    # one stream with DVC's "Running stage" lines: which package modules each stage's code used.
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run(
        [f"{BIN}/dvc", "repro"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = result.stdout
    (root.parent / "imports.log").write_text(log)
    assert result.returncode == 0, "\n".join(line for line in log.splitlines() if "import time:" not in line)
    (root.parent / "repro.log").write_text(
        "\n".join(line for line in log.splitlines() if not line.startswith("import time:"))
    )
    return root


def test_repro_writes_every_output(repo: Path) -> None:
    for arch in ARCHS:
        metrics = json.loads((repo / "results" / f"{arch}.json").read_text())
        assert len(metrics["seeds"]) == 2 and 0 <= metrics["test_acc"] <= 1
        headline = json.loads((repo / "metrics" / f"{arch}.json").read_text())
        assert headline == {k: round(metrics[k], 6) for k in ("test_acc", "test_acc_std", "test_f1_macro")}
        for name in ("model.ckpt", "model.safetensors", "config.json"):
            assert (repo / "models" / arch / name).is_file()
        assert (repo / "plots" / arch / "learning_curve.csv").read_text().startswith("epoch,train_loss")
        assert (repo / "plots" / arch / "seed-42" / "confusion.png").is_file()
    board = (repo / "reports" / "leaderboard.md").read_text()
    assert all(f"| {arch} |" in board for arch in ARCHS) and "±" in board
    depth_rows = [line for line in board.splitlines() if line.startswith(("| 4 | yes |", "| 4 | no |"))]
    assert "## Depth study" in board and len(depth_rows) == 2  # depth 4: 2 inits, plain, no clipping
    assert (repo / "plots" / "depth" / "accuracy_vs_depth.png").is_file()
    assert "## Generative: conditional GAN" in board
    for label in ("1-NN (Euclidean)", "logistic regression (sklearn)"):
        assert f"| classical: {label} |" in board
    assert "**Best network: " in board and "the better classical baseline" in board
    baselines = json.loads((repo / "results" / "baselines.json").read_text())
    sha = json.loads((repo / "data" / "prepared" / "manifest.json").read_text())["sha256"]
    assert baselines["data_sha256"] == sha and set(baselines["baselines"]) == {"logreg", "1nn"}
    assert (repo / "models" / "gan" / "generator.safetensors").is_file()


def test_transfer_reports_every_budget_with_zero_shot_and_tracks_each_fit(repo: Path) -> None:
    from sounding.transfer import ROWS

    for arch in ("cnn", "mlp"):  # transfer.archs
        assert (repo / "models" / "pretrained" / arch / "model.safetensors").is_file()
        assert (repo / "plots" / "transfer" / f"{arch}.csv").is_file()
    summary = json.loads((repo / "results" / "transfer.json").read_text())
    assert list(summary["labels"]) == ["0.01", "0.05", "0.2", "1"] and summary["seeds"] == [42, 43]
    board = (repo / "reports" / "leaderboard.md").read_text()
    section = board.split("## Transfer")[1]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith(("| cnn | ", "| mlp | "))]
    assert len(rows) == 8 and all(0 <= float(row[3]) <= 1 for row in rows)  # the zero-shot column
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    runs = tracking.client(uri).search_runs(
        [tracking.experiment_id(uri, "sounding-transfer")], max_results=100
    )
    stages = sorted(r.data.tags["stage"] for r in runs)
    assert stages.count("pretrain") == 2 and stages.count("transfer") == 1 + 2 * len(ROWS) * 4


def test_dvc_metrics_show_is_one_row_per_model_in_a_120_column_terminal(repo: Path) -> None:
    shown = run_dvc("metrics", "show", "--precision", "3", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(map(len, lines)) <= 120, shown.stdout
    header = lines[0].split()
    assert header == [
        "Path",
        "finetune_gain",
        "frechet",
        "judge_acc",
        "test_acc",
        "test_acc_std",
        "test_f1_macro",
    ]
    rows = {line.split()[0] for line in lines[1:]}
    assert {f"metrics/{arch}.json" for arch in ARCHS} <= rows
    assert {
        "metrics/baselines/logreg.json",
        "metrics/baselines/1nn.json",
        "metrics/transfer/mlp.json",
    } <= rows


def test_the_pipeline_log_holds_no_library_noise(repo: Path) -> None:
    log = (repo.parent / "repro.log").read_text()
    assert "Running stage 'register'" in log
    # A library's warning names its file: ".../site-packages/lightning/...py:68: You passed in ...".
    for noise in ("INFO mlflow", "Downloading artifacts", "Warning:", "site-packages/", "Traceback"):
        assert noise not in log, noise


NOT_RESULTS = {
    "src/sounding/__init__.py": "the version, and telemetry turned off",
    "src/sounding/cli.py": "the command line; each stage's options are in its cmd",
    "src/sounding/errors.py": "exception classes",
    "src/sounding/repro.py": "the workspace lock",
    "src/sounding/startup.py": "fewer garbage-collection passes while the process imports",
}
"""Package modules a stage imports that shape none of its outputs, so they are not its deps."""
STARTED_BY = {"src/sounding/tracking.py": ["src/sounding/tracking_writer.py"]}
"""Modules run as a process (``python -m``) by a module, which the import log does not list."""


def imported_modules(log: str) -> dict[str, set[str]]:
    """The package files each stage imported (its processes and their workers), from a ``dvc repro`` log
    with PYTHONPROFILEIMPORTTIME's lines."""
    src = Path(__file__).parents[1] / "src"
    used: dict[str, set[str]] = {}
    stage = None
    for line in log.splitlines():
        if started := re.match(r"Running stage '(.+)':", line):
            stage = started[1]
        elif (module := re.match(r"import time:.*\|\s*(sounding(\.\w+)*)\s*$", line)) and stage:
            base = src.joinpath(*module[1].split("."))
            path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            path = path.relative_to(src.parent).as_posix()
            used.setdefault(stage, set()).update([path, *STARTED_BY.get(path, [])])
    return used


def stage_deps(root: Path) -> dict[str, list[str]]:
    """Each stage's deps in ``root``'s dvc.yaml, ``foreach`` stages expanded as DVC names them."""
    from dvc.repo import Repo

    with Repo(str(root)) as dvc:
        return {s.name: [d.def_path for d in s.deps] for s in dvc.index.stages}


def uncovered(used: dict[str, set[str]], deps: dict[str, list[str]]) -> list[str]:
    """``STAGE: FILE`` for each package file a stage imported that none of its deps covers."""
    return [
        f"{stage}: {path}"
        for stage, paths in sorted(used.items())
        for path in sorted(paths)
        if path not in NOT_RESULTS
        and not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps[stage])
    ]


def test_each_stage_depends_on_the_package_modules_it_imports(repo: Path) -> None:
    used = imported_modules((repo.parent / "imports.log").read_text())
    deps = stage_deps(repo)
    assert {"prepare", "train@cnn", "register", "report"} <= set(used)
    assert uncovered(used, deps) == []
    # The check bites: without one of its modules in deps, a stage is reported.
    deps["train@cnn"] = [d for d in deps["train@cnn"] if d != "src/sounding/training.py"]
    assert uncovered(used, deps) == ["train@cnn: src/sounding/training.py"]


def test_second_repro_is_a_noop(repo: Path) -> None:
    result = run_dvc("repro", cwd=repo)
    assert result.returncode == 0 and "Running stage" not in result.stdout
    assert run_dvc("status", cwd=repo).stdout.strip().startswith("Data and pipelines are up to date")


def test_a_change_of_one_architecture_s_params_stales_the_stages_that_read_them(
    repo: Path, tmp_path: Path
) -> None:
    """dvc.yaml lists params finely enough: a change of the CNN's dropout stales the CNN's tuning and
    training and the transfer stages (their ``transfer.archs`` may name any architecture, so they read
    ``models`` whole), and no other architecture's stages."""
    root = tmp_path / "repo"
    shutil.copytree(repo, root, symlinks=True)
    write_params(root / "params.yaml", tiny_params(**OVERRIDES, **{"models.cnn.dropout": 0.1}))
    status = run_dvc("status", "--json", cwd=root)
    assert status.returncode == 0, status.stderr
    assert set(json.loads(status.stdout)) == {"tune@cnn", "train@cnn", "pretrain", "transfer"}


def test_the_retraining_flow_and_dvc_repro_each_find_nothing_to_do_after_the_other(
    repo: Path, tmp_path: Path, prefect_harness: None
) -> None:
    """The Prefect flow (pipelines/retrain.py) and `dvc repro` agree on what is stale, both ways: after
    `dvc repro`, a flow run skips every stage; after a change of the depth study's params, a flow run runs
    that study and what reads its results (the stages a params change stales are checked just above), its
    runs carry the flow run's id, and `dvc status` and `dvc repro` then find nothing to do."""
    from pipelines import retrain as pipeline

    root = tmp_path / "repo"
    shutil.copytree(repo, root, symlinks=True)
    params_path = str(root / "params.yaml")
    stages = [s.name for s in pipeline.pipeline(root)]
    assert pipeline.retrain(params_path) == dict.fromkeys(stages, "Skipped")

    write_params(root / "params.yaml", tiny_params(**{**OVERRIDES, "depth.epochs": 2}))
    run = pipeline.retrain(params_path, return_state=True)
    states = run.result()
    print("flow run after depth.epochs changed:", states)
    ran = {stage for stage, state in states.items() if state == "Completed"}
    assert set(states.values()) == {"Completed", "Skipped"} and ran == {"depth", "report", "register"}
    status = run_dvc("status", cwd=root)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    again = run_dvc("repro", cwd=root)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout + again.stderr
    c = tracking.client(f"sqlite:///{root / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=10_000)
    flow_run_id = str(run.state_details.flow_run_id)
    by_flow = {
        r.data.tags["dvc.stage"] for r in runs if r.data.tags.get("prefect.flow_run_id") == flow_run_id
    }
    assert by_flow == {"depth"}  # report and register start no run


def test_every_architecture_run_has_the_same_metric_keys_and_tags(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    client = tracking.client(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    every_run = client.search_runs([exp.experiment_id])
    # Two seeds per architecture, the untuned values' two beside an architecture whose tuned values were
    # adopted (docs/tuning.md), the GAN's run and the two baselines'.
    results = [json.loads((repo / "results" / f"{a}.json").read_text()) for a in ARCHS]
    untuned = [r for r in every_run if r.data.tags.get("reference") == "untuned"]
    assert len(untuned) == 2 * sum(r["untuned"]["trained"] for r in results)
    assert len(every_run) == 2 * len(ARCHS) + len(untuned) + 3
    assert all(r.info.status == "FINISHED" for r in every_run)
    every_run = [r for r in every_run if r not in untuned]
    baselines = {r.data.tags["arch"] for r in every_run if r.data.tags["stage"] == "baselines"}
    assert baselines == {"baseline/logreg", "baseline/1nn"}
    # The networks share metric keys (the GAN and the classical baselines log their own).
    runs = [r for r in every_run if r.data.tags["arch"] != "gan" and r.data.tags["stage"] == "train"]
    names = {r.info.run_name for r in runs}
    assert names == {f"{a}-seed{s}" for a in ARCHS for s in (42, 43)}

    def common(keys: set[str]) -> set[str]:
        return {k for k in keys if not k.startswith("grad_norm/")}  # layers differ by architecture

    metric_keys = [common(set(r.data.metrics)) for r in runs]
    assert all(keys == metric_keys[0] for keys in metric_keys)
    assert {"train/loss", "val/loss", "val/acc", "test/acc", "test/f1_macro"} <= metric_keys[0]
    # The GAN's and the baselines' runs are tagged like the networks'.
    tag_keys = [{k for k in r.data.tags if not k.startswith("mlflow.")} for r in every_run]
    assert all(keys == tag_keys[0] for keys in tag_keys)
    assert {"git_sha", "data_sha256", "stage", "arch", "seed"} <= tag_keys[0]
    sha = json.loads((repo / "data" / "prepared" / "manifest.json").read_text())["sha256"]
    assert {r.data.tags["data_sha256"] for r in every_run} == {sha}
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/confusion.png", "plots/grad_norms.png"} <= artifacts


def test_every_run_logs_the_params_that_shaped_it_not_the_whole_params_file(repo: Path) -> None:
    """Training, tuning, transfer, depth, GAN and baseline runs alike: at most one architecture's network
    settings, and none of the sections that shape no fit (registry, retraining, tracking)."""
    client = tracking.client(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"train", "tune", "transfer", "depth", "baselines"} <= stages, stages
    for run in runs:
        keys = set(run.data.params)
        networks = {k.split(".")[1] for k in keys if k.startswith("models.")}
        assert len(networks) <= 1, (run.info.run_name, networks)
        assert not {k.split(".")[0] for k in keys} & {"registry", "retrain", "tracking"}, run.info.run_name


def test_registered_pyfunc_loads_without_pickle_and_predicts(repo: Path) -> None:
    import mlflow
    import numpy as np

    client = tracking.client(f"sqlite:///{repo / 'mlflow.db'}")
    run_id = json.loads((repo / "results" / "cnn.json").read_text())["seeds"][0]["run_id"]
    models = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    model = next(m for m in models if m.source_run_id == run_id)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model(model.model_uri)
    x = np.load(repo / "data" / "prepared" / "test.npz")["x"][:5].astype("float32")
    probs = loaded.predict(x)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert not list(Path(model.artifact_location.removeprefix("file://")).rglob("*.pkl"))


def test_dvc_push_pull_round_trip(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert run_dvc("remote", "add", "--local", "-d", "scratch", str(remote), cwd=repo).returncode == 0
    assert run_dvc("push", cwd=repo).returncode == 0
    manifest = (repo / "data" / "prepared" / "manifest.json").read_text()
    subprocess.run(["rm", "-rf", "data/prepared", ".dvc/cache"], cwd=repo, check=True)
    pulled = run_dvc("pull", "prepare", cwd=repo)
    assert pulled.returncode == 0, pulled.stderr
    assert (repo / "data" / "prepared" / "manifest.json").read_text() == manifest
    from sounding.data.prepare import verify

    verify(repo / "data" / "prepared")


def test_kill_9_mid_training_resumes_the_same_run_without_losing_an_epoch(
    tmp_path: Path, figures: Counter[str]
) -> None:
    epochs = 8
    params = write_params(
        tmp_path / "params.yaml",
        tiny_params(
            **{
                "data.mnist1d.num_samples": 5000,
                "train.epochs": epochs,
                "train.archs": ["rnn"],
                "gan.judge": "rnn",
            }
        ),
    )
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    prepare_in(straight_dir, params)
    shutil.copytree(straight_dir / "data", killed_dir / "data")
    run_cli("train", "rnn", "--params", str(params), "-q", cwd=straight_dir, check=True)

    proc = subprocess.Popen(
        [f"{BIN}/sounding", "train", "rnn", "--params", str(params), "-q"],
        cwd=killed_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(killed_dir.glob("checkpoints/rnn/*/last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.8)  # into a later epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (ckpt,) = killed_dir.glob("checkpoints/rnn/*/last.ckpt")
    import torch

    killed_at = torch.load(ckpt, weights_only=True, map_location="cpu")["epoch"]
    assert killed_at < epochs - 1, "the kill came too late to test a resume"
    run_id = json.loads((ckpt.parent / "run.json").read_text())["run_id"]

    run_cli("train", "rnn", "--params", str(params), "-q", cwd=killed_dir, check=True)
    resumed = json.loads((killed_dir / "results" / "rnn.json").read_text())["seeds"][0]
    straight = json.loads((straight_dir / "results" / "rnn.json").read_text())["seeds"][0]
    assert resumed["run_id"] == run_id
    uri = f"sqlite:///{killed_dir / 'mlflow.db'}"
    assert tracking.logged_steps(uri, run_id, "epoch") == list(range(epochs))  # contiguous, none repeated
    assert tracking.client(uri).get_run(run_id).info.status == "FINISHED"
    assert resumed["test/acc"] == pytest.approx(straight["test/acc"], abs=1e-6)
    assert resumed["test/loss"] == pytest.approx(straight["test/loss"], rel=1e-5)
    from safetensors.torch import load_file

    weights = [load_file(d / "models" / "rnn" / "model.safetensors") for d in (killed_dir, straight_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])  # same weights
    assert yaml.safe_load(params.read_text())["train"]["epochs"] == epochs
    figures["faults injected"] += 1
    figures["runs checked"] += 2


def test_sigterm_mid_training_closes_the_run_as_killed(tmp_path: Path, figures: Counter[str]) -> None:
    params = write_params(
        tmp_path / "params.yaml",
        tiny_params(
            **{
                "data.mnist1d.num_samples": 5000,
                "train.epochs": 50,
                "train.archs": ["rnn"],
                "gan.judge": "rnn",
            }
        ),
    )
    prepare_in(tmp_path, params)
    proc = subprocess.Popen(
        [f"{BIN}/sounding", "train", "rnn", "--params", str(params), "-q"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list(tmp_path.glob("checkpoints/rnn/*/last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr
    (state,) = tmp_path.glob("checkpoints/rnn/*/run.json")
    run_id = json.loads(state.read_text())["run_id"]
    assert tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"
    figures["faults injected"] += 1
    figures["runs checked"] += 1


def test_registered_champion_serves_the_same_predictions_as_predict(repo: Path) -> None:
    import numpy as np

    decisions = json.loads((repo / "reports" / "promotion.json").read_text())["decisions"]
    assert {d["model"] for d in decisions} == {f"sounding-{a}" for a in (*ARCHS, "best")}
    x = np.load(repo / "data" / "prepared" / "test.npz")["x"][:16].astype("float32")
    np.savez(repo / "batch.npz", x=x)
    run_cli(
        "predict",
        "--model",
        "models:/sounding-cnn@champion",
        "--input",
        "batch.npz",
        "--output",
        "p.csv",
        cwd=repo,
        check=True,
    )
    expected = np.loadtxt(repo / "p.csv", delimiter=",", skiprows=1)[:, 2:]

    served = served_predictions("models:/sounding-cnn@champion", x, repo, f"sqlite:///{repo / 'mlflow.db'}")
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert (served.argmax(1) == expected.argmax(1)).all()
