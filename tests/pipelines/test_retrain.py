"""The retraining flow on tiny params, against one session-wide Prefect test server.

The tests of ``workspace`` share one workspace and run in file order: a first run, a rerun with nothing
changed, a change to one architecture, two flows started at once, a failed run and the run after it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prefect import flow

from pipelines import retrain as pipeline
from sounding import tracking
from sounding.config import DataParams, Params
from sounding.errors import BadInput
from tests.conftest import run_cli, write_params
from tests.pipelines.conftest import flow_params

STAGES = {"prepare", "tune-linear", "tune-cnn", "train-linear", "train-cnn", "baselines", "pretrain",
          "transfer", "register", "report"}  # fmt: skip


def test_the_prepare_task_is_keyed_on_every_user_file_its_source_reads() -> None:
    def data(**overrides: object) -> DataParams:
        return Params().with_overrides({f"data.{k}": v for k, v in overrides.items()}).data

    assert pipeline.raw_inputs(data()) == [] and pipeline.raw_inputs(data(source="digits")) == []
    assert pipeline.raw_inputs(data(source="npz", path="a.npz", test_path="b.npz")) == ["a.npz"]
    assert pipeline.raw_inputs(data(source="ts", path="a.ts")) == ["a.ts"]
    assert pipeline.raw_inputs(data(source="table", path="a.csv", test_path="b.csv")) == ["a.csv", "b.csv"]


def _runs(params: Params, **tags: str) -> list:
    """Every MLflow run of every experiment whose tags match."""
    c = tracking.client(params.tracking.uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, max_results=10_000)
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None):
    """A workspace after one retraining: its folder, params and the stages' final states."""
    root = tmp_path_factory.mktemp("workspace")
    params = flow_params()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        write_params(root / "params.yaml", params)
        states = pipeline.retrain("params.yaml")
    return root, params, states


@pytest.fixture
def in_workspace(workspace, monkeypatch: pytest.MonkeyPatch):
    root, params, states = workspace
    monkeypatch.chdir(root)
    return root, params, states


def test_first_run_completes_every_stage(in_workspace) -> None:
    root, params, states = in_workspace
    assert states == dict.fromkeys(STAGES, "Completed")
    for path in ("metrics/linear.json", "metrics/cnn.json", "models/cnn/model.safetensors",
                 "metrics/baselines.json", "metrics/transfer.json", "reports/promotion.json",
                 "reports/leaderboard.md"):  # fmt: skip
        assert (root / path).is_file(), path
    assert "| classical: 1-NN (Euclidean) |" in (root / "reports/leaderboard.md").read_text()
    runs = _runs(params)
    assert runs and all(r.data.tags.get("prefect.flow_run_id") for r in runs)
    assert {r.data.tags["arch"] for r in _runs(params, stage="train")} == {"linear", "cnn"}


def test_rerun_with_nothing_changed_is_cached_and_trains_nothing(in_workspace) -> None:
    _, params, _ = in_workspace
    before = len(_runs(params))
    assert pipeline.retrain("params.yaml") == dict.fromkeys(STAGES, "Cached")
    assert len(_runs(params)) == before


def test_a_change_to_one_architecture_retrains_only_it(in_workspace) -> None:
    root, params, _ = in_workspace
    linear_runs = len(_runs(params, stage="train", arch="linear"))
    cnn_runs = len(_runs(params, stage="train", arch="cnn"))
    write_params(root / "params.yaml", params.with_overrides({"models.cnn.channels": 8}))
    states = pipeline.retrain("params.yaml")
    assert states["tune-linear"] == states["train-linear"] == states["prepare"] == "Cached"
    assert states["tune-cnn"] == states["train-cnn"] == states["register"] == "Completed"
    # pretrain and transfer depend on every `models` section, as in dvc.yaml: they rerun too
    assert len(_runs(params, stage="train", arch="linear")) == linear_runs
    assert len(_runs(params, stage="train", arch="cnn")) == cnn_runs + 1


def test_two_retrainings_at_once_train_once(in_workspace) -> None:
    root, params, _ = in_workspace
    cnn_runs = len(_runs(params, stage="train", arch="cnn"))
    write_params(root / "params.yaml", params.with_overrides({"models.cnn.channels": 12}))
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(pipeline.retrain("params.yaml"))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sorted(r["train-cnn"] for r in results) == ["Cached", "Completed"]
    assert len(_runs(params, stage="train", arch="cnn")) == cnn_runs + 1


def test_a_failed_flow_keeps_what_completed(in_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    root, params, _ = in_workspace
    write_params(root / "params.yaml", params.with_overrides({"models.cnn.channels": 16}))

    def unreachable(*args: object) -> None:
        raise ConnectionError("MLflow registry did not answer")

    with monkeypatch.context() as mp:
        mp.setattr("sounding.registry.register_all", unreachable)
        with pytest.raises(ConnectionError):
            pipeline.retrain("params.yaml")
    cnn_runs = len(_runs(params, stage="train", arch="cnn"))
    states = pipeline.retrain("params.yaml")
    assert states["train-cnn"] == "Cached" and states["register"] == "Completed"
    assert len(_runs(params, stage="train", arch="cnn")) == cnn_runs


def _report_flow(params: Params):
    """A flow running the report task alone, configured as the retraining flow configures it."""

    @flow
    def report_only() -> dict:
        task = pipeline._configured(pipeline.report, params, False, ["reports/leaderboard.md"])
        return task(params, "report", "", [], ["reports/leaderboard.md"])

    return report_only


def test_a_transient_failure_is_retried_then_succeeds(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def flaky(metrics_dir, archs, source, out_dir) -> Path:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("MLflow server did not answer")
        return Path(out_dir) / "leaderboard.md"

    monkeypatch.setattr("sounding.report.write_report", flaky)
    result = _report_flow(flow_params())()
    assert len(calls) == 2 and result["leaderboard"].endswith("leaderboard.md")


def test_bad_input_fails_at_once_without_retry(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def bad(*args: object) -> None:
        calls.append(1)
        raise BadInput("metrics/cnn.json not found: run `sounding train cnn` first")

    monkeypatch.setattr("sounding.report.write_report", bad)
    with pytest.raises(BadInput, match="sounding train cnn"):
        _report_flow(flow_params(**{"retrain.retries": 3}))()
    assert len(calls) == 1


def test_bad_params_fail_before_any_work(prefect_harness: None, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        pipeline.retrain("missing.yaml")
    write_params(tmp_path / "params.yaml", flow_params())
    with pytest.raises(BadInput, match="allowed: linear"):
        pipeline.retrain("params.yaml", archs=["transformer"])
    assert not (tmp_path / "data").exists()
    result = run_cli("retrain", "--arch", "transformer", cwd=tmp_path)
    assert result.returncode == 2 and "unknown architecture" in result.stderr


def test_cache_key_covers_the_stage_params_and_inputs_and_missing_outputs_refresh(tmp_path: Path) -> None:
    params = flow_params()
    (tmp_path / "best.json").write_text("{}")

    def key(p: Params, arch: str = "cnn") -> str:
        parameters = {"params": p, "stage": "tune", "arch": arch, "inputs": ["best.json"], "outputs": []}
        return pipeline._cache_key(None, parameters)

    base = key(params)
    assert key(params) == base
    assert key(params.with_overrides({"models.mlp.hidden": 7})) == base  # another architecture's section
    assert key(params.with_overrides({"models.cnn.channels": 7})) != base
    assert key(params.with_overrides({"retrain.max_workers": 1})) == base  # not a result-shaping key
    assert key(params, arch="linear") != base
    assert not pipeline._configured(pipeline.tune, params, False, ["best.json"]).refresh_cache
    assert pipeline._configured(pipeline.tune, params, False, ["best.json", "missing"]).refresh_cache
    assert pipeline._configured(pipeline.tune, params, True, ["best.json"]).refresh_cache
    (tmp_path / "best.json").write_text('{"changed": 1}')
    assert key(params) != base


def test_task_runner_follows_params() -> None:
    assert type(pipeline.task_runner(flow_params())).__name__ == "ThreadPoolTaskRunner"
    runner = pipeline.task_runner(
        flow_params(**{"retrain.task_runner": "processes", "retrain.max_workers": 3})
    )
    assert type(runner).__name__ == "ProcessPoolTaskRunner" and runner._max_workers == 3
    with pytest.raises(BadInput, match="not thread-safe"):
        flow_params(**{"retrain.max_workers": 2})


def test_schedule_refuses_what_cannot_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_params(tmp_path / "params.yaml", flow_params())
    bad_cron = run_cli("schedule", "--cron", "at three", cwd=tmp_path)
    assert bad_cron.returncode == 2 and "not a cron expression" in bad_cron.stderr
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    ephemeral = run_cli("schedule", cwd=tmp_path)
    assert ephemeral.returncode == 2 and "cannot run schedules" in ephemeral.stderr
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens on the discard port
    unanswered = run_cli("schedule", cwd=tmp_path)
    assert unanswered.returncode == 2 and "no Prefect server answers" in unanswered.stderr
