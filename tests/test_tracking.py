"""Tracking: runs always end in a final state, params are flat, tags are set."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sounding import tracking
from sounding.config import Params
from tests.conftest import tiny_params


def _run(params: Params, run_id: str):
    return tracking.client(params.tracking.uri).get_run(run_id)


def test_run_finishes_with_flat_params_and_tags(params: Params) -> None:
    with tracking.tracked_run(params, "cnn-seed0", {"arch": "cnn", "stage": "train"}) as run_id:
        tracking.log_metrics(params.tracking.uri, run_id, {"val/acc": 0.5}, step=0)
    run = _run(params, run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "cnn-seed0"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["models.cnn.kernels"] == "[5, 3, 3]"
    assert run.data.tags["arch"] == "cnn" and "git_sha" in run.data.tags
    assert run.data.metrics["val/acc"] == 0.5


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_run_is_closed_on_every_exit_path(
    params: Params, error: type, status: str, figures: Counter[str]
) -> None:
    seen = {}
    with pytest.raises(error):
        with tracking.tracked_run(params, "x", {}) as run_id:
            seen["id"] = run_id
            raise error("boom")
    assert _run(params, seen["id"]).info.status == status
    figures["faults injected"] += 1
    figures["runs checked"] += 1


def test_reattaching_continues_the_same_run(params: Params) -> None:
    with tracking.tracked_run(params, "x", {}) as run_id:
        tracking.log_metrics(params.tracking.uri, run_id, {"epoch": 0}, step=0)
    with tracking.tracked_run(params, "x", {"resumed": "1"}, run_id=run_id) as again:
        tracking.log_metrics(params.tracking.uri, again, {"epoch": 1}, step=1)
    assert again == run_id
    assert tracking.logged_steps(params.tracking.uri, run_id, "epoch") == [0, 1]
    assert _run(params, run_id).data.tags["resumed"] == "1"


def test_section_params_keep_the_named_sections_under_their_full_names(params: Params) -> None:
    picked = tracking.section_params(params, "seed", "train", "models.rnn")
    flat = tracking.flatten(picked)
    assert flat["seed"] == str(params.seed) and flat["train.lr"] == str(params.train.lr)
    assert {k.split(".")[1] for k in flat if k.startswith("models.")} == {"rnn"}
    assert not any(k.startswith(("data.", "tune.", "compute.")) for k in flat)


def test_flatten() -> None:
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "{}"}


def test_a_float32_figure_becomes_the_decimal_it_stands_for_and_any_other_number_stays() -> None:
    assert tracking.as_number(float(np.float32(0.932))) == 0.932  # not 0.9319999814033508
    assert tracking.as_number(float(np.float32(2.0e-5))) == 2.0e-5
    assert tracking.as_number(float(np.float32(3))) == 3.0
    assert tracking.as_number(0.1 + 0.2) == 0.30000000000000004  # a float64 result is kept whole
    assert tracking.as_number(1e300) == 1e300 and math.isnan(tracking.as_number(float("nan")))


def test_metrics_are_stored_as_the_decimals_they_stand_for(params: Params) -> None:
    uri = params.tracking.uri
    with tracking.tracked_run(params, "x", {}) as run_id:
        tracking.log_metrics(uri, run_id, {"val/acc": float(np.float32(0.932)), "time_s": 1 / 3}, step=0)
    assert _run(params, run_id).data.metrics == {"val/acc": 0.932, "time_s": 1 / 3}


def test_metrics_handed_to_the_writer_process_are_stored_before_the_run_ends(params: Params) -> None:
    uri = params.tracking.uri
    with tracking.tracked_run(params, "x", {}) as run_id:
        tracking.send_steps(
            uri, run_id, [(epoch, {"val/acc": epoch / 10, "epoch": epoch}) for epoch in range(5)]
        )
        tracking.send_steps(uri, run_id, [(5, {"val/acc": 0.5, "epoch": 5})])
    assert tracking.logged_steps(uri, run_id, "epoch") == [0, 1, 2, 3, 4, 5]  # in before set_terminated
    assert _run(params, run_id).info.status == "FINISHED"
    assert (
        tracking._writer is not None and tracking._writer._proc.poll() is None
    )  # one child, kept for the next run


def test_a_run_ended_in_background_ends_after_its_metrics_and_fails_if_they_did(params: Params) -> None:
    uri = params.tracking.uri
    with tracking.tracked_run(params, "x", {}, end_in_background=True) as ok:
        tracking.send_steps(uri, ok, [(epoch, {"epoch": epoch}) for epoch in range(3)])
        tracking.send_tags(uri, ok, {"trial_state": "COMPLETE"})
    with tracking.tracked_run(params, "y", {}, end_in_background=True) as bad:
        tracking.send_steps(uri, bad, [(0, {"epoch": float("nan"), "bad": "not a number"})])
    with pytest.raises(RuntimeError, match="logging to MLflow failed"):
        tracking.wait_sent()
    assert tracking.logged_steps(uri, ok, "epoch") == [0, 1, 2]
    run = _run(params, ok)
    assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"
    assert _run(params, bad).info.status == "FAILED"


def test_params_go_through_the_writer_and_a_run_whose_params_fail_ends_failed(params: Params) -> None:
    with pytest.raises(RuntimeError, match="logging to MLflow failed: .*bad\\?name"):
        with tracking.tracked_run(params, "x", {}, logged_params={"lr": 0.1, "bad?name": 1}) as run_id:
            pass
    run = _run(params, run_id)
    assert run.info.status == "FAILED" and "bad?name" not in run.data.params


def test_a_failed_write_in_the_writer_process_is_raised_in_the_parent(params: Params) -> None:
    tracking.client(params.tracking.uri)  # the store exists
    tracking.send_steps(params.tracking.uri, "0" * 32, [(0, {"val/acc": 0.5})])  # no such run
    with pytest.raises(RuntimeError, match="logging to MLflow failed: .*0{32}"):
        tracking.wait_sent()


def test_a_dead_writer_process_is_an_error_not_a_hang(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    monkeypatch.setattr(tracking, "_writer", None)  # a writer of this test's own
    with tracking.tracked_run(params, "x", {}) as run_id:
        tracking.send_steps(params.tracking.uri, run_id, [(0, {"epoch": 0})])
        tracking.wait_sent()
        os.kill(tracking._writer._proc.pid, signal.SIGKILL)
        tracking._writer._proc.wait()
        tracking.send_steps(params.tracking.uri, run_id, [(1, {"epoch": 1})])
        with pytest.raises(
            RuntimeError, match=r"MLflow writer process \(pid \d+\) died with 1 item\(s\) unwritten"
        ):
            tracking.wait_sent()
        monkeypatch.setattr(tracking, "_writer", None)
    assert tracking.logged_steps(params.tracking.uri, run_id, "epoch") == [0]


def test_an_experiment_created_meanwhile_by_another_process_is_reused(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four trainings starting at once against one server all found the experiment missing; the losers of
    the creation race crashed (found by tests/test_concurrency_slow.py)."""
    c = tracking.client(params.tracking.uri)
    existing = c.create_experiment("raced")
    monkeypatch.setattr(type(c), "get_experiment_by_name", _missing_once(type(c).get_experiment_by_name))
    assert tracking.experiment_id(params.tracking.uri, "raced") == existing


def test_a_dataset_inserted_meanwhile_by_another_run_is_linked_not_an_error(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four trainings against one server logged the same data at once; the loser of the store's insert race
    crashed on the unique key (found by tests/test_concurrency_slow.py in CI)."""
    from mlflow.exceptions import MlflowException

    with tracking.tracked_run(params, "a", {}) as run_id:
        pass
    c = tracking.client(params.tracking.uri)
    log_inputs, calls = type(c).log_inputs, []

    def lose_the_race_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.digest")
        return log_inputs(self, *args, **kwargs)

    monkeypatch.setattr(type(c), "log_inputs", lose_the_race_once)
    tracking.log_dataset(params.tracking.uri, run_id, "mnist1d", "ab" * 32, "/data", "train")
    (logged,) = _run(params, run_id).inputs.dataset_inputs
    assert (len(calls), logged.dataset.name, logged.dataset.digest) == (2, "mnist1d", ("ab" * 32)[:36])

    def refuse(self, *args, **kwargs):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")

    monkeypatch.setattr(type(c), "log_inputs", refuse)
    with pytest.raises(MlflowException, match="run not found"):  # any other error is not retried
        tracking.log_dataset(params.tracking.uri, run_id, "mnist1d", "cd" * 32, "/data", "train")


def _missing_once(lookup):
    calls = []

    def first_none(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    return first_none


def _tags(_: object) -> dict[str, str]:
    return tracking.context_tags()


def test_worker_processes_carry_the_context_tags_of_the_process_that_started_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sounding import parallel

    flow = {"prefect.flow_run_id": "0f5e", "prefect.deployment": "nightly"}
    monkeypatch.setattr(tracking, "_inherited_tags", flow)  # as if this process ran in a flow run
    assert parallel.run_jobs(tiny_params(**{"compute.workers": 2}), _tags, [0, 1]) == [flow, flow]


def test_a_stage_command_started_by_a_flow_carries_the_tags_the_flow_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    flow = {"prefect.flow_run_id": "0f5e", "prefect.deployment": "nightly"}
    monkeypatch.setenv(tracking.ORCHESTRATION_TAGS_ENV, json.dumps(flow))  # as pipelines/retrain.py sets it
    assert tracking.context_tags() == flow


def test_runs_carry_mlflows_source_tags_and_the_dvc_stage(
    params: Params, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", *args], check=True, capture_output=True, cwd=tmp_path)

    git("init", "-q")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.yaml").write_text("seed: 42\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "cnn.json").write_text("{}")
    git("add", "dvc.lock", "params.yaml", "metrics")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=tmp_path).stdout
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # as `dvc repro` rewrites them
    (tmp_path / "metrics" / "cnn.json").write_text('{"test_acc": 0.9}')
    monkeypatch.setenv("DVC_STAGE", "train@cnn")
    monkeypatch.setenv("DVC_EXP_NAME", "lucid-lr")
    tracking.git_sha.cache_clear()
    with tracking.tracked_run(params, "x", {}) as run_id:
        pass
    tags = _run(params, run_id).data.tags
    assert tags["mlflow.source.git.commit"] == head.strip() == tags["git_sha"]  # outputs are no change
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert (tags["dvc.stage"], tags["dvc.exp_name"]) == ("train@cnn", "lucid-lr")

    (tmp_path / "params.yaml").write_text("seed: 43\n")
    tracking.git_sha.cache_clear()
    assert tracking.git_sha() == head.strip() + "-dirty"
    tracking.git_sha.cache_clear()


def test_a_relative_store_is_anchored_on_the_workspace_even_from_dvcs_experiment_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".dvc").mkdir()
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc123"  # where DVC runs a queued experiment
    (copy / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    outside = tmp_path.parent / f"{tmp_path.name}-plain"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{outside / 'mlflow.db'}"


def _held_run(uri: str) -> str:
    """A worker's job: one run that succeeds."""
    with tracking.tracked_run(
        tiny_params(**{"tracking.uri": uri}), "held", {}, end_in_background=True
    ) as run_id:
        return run_id


def test_runs_held_until_published_end_finished_with_the_block_or_failed_and_tagged_without_it(
    params: Params, figures: Counter[str]
) -> None:
    """The runs of a stage that publishes outputs (here: one in this process, two in worker processes)
    stay RUNNING until the outputs are published, and end FAILED with the reason when they are not; a run
    re-attached later (a resumed seed) joins the next publication and loses the old reason."""
    from sounding import parallel

    uri = params.tracking.uri
    two = params.with_overrides({"compute.workers": 2})
    with tracking.held_until_published(uri):
        with tracking.tracked_run(params, "here", {}) as here:
            pass
        there = parallel.run_jobs(two, _held_run, [uri, uri])
        held = [here, *there]
        assert [_run(params, r).info.status for r in held] == ["RUNNING"] * 3
        assert len({_run(params, r).data.tags[tracking.PUBLICATION_TAG] for r in held}) == 1
        tracking.client(uri).set_terminated(here, "KILLED")  # as `runs cleanup` closes a silent run
    assert [_run(params, r).info.status for r in held] == ["FINISHED"] * 3

    with pytest.raises(OSError), tracking.held_until_published(uri):
        with tracking.tracked_run(params, "unpublished", {}) as unpublished:
            pass
        raise OSError(28, "No space left on device")
    run = _run(params, unpublished)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags[tracking.UNPUBLISHED_TAG]
    assert all(_run(params, r).info.status == "FINISHED" for r in held)  # another publication's runs

    with tracking.held_until_published(uri):
        with tracking.tracked_run(params, "unpublished", {}, run_id=unpublished):
            pass
        assert _run(params, unpublished).info.status == "RUNNING"
    run = _run(params, unpublished)
    assert run.info.status == "FINISHED" and tracking.UNPUBLISHED_TAG not in run.data.tags
    figures["faults injected"] += 1
    figures["runs checked"] += 4


OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from sounding import tracking
folder = Path(sys.argv[1])
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
tracking.client(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
"""


def test_each_test_starts_with_an_empty_store_as_mlflow_would_create_it_in_its_folder(tmp_path: Path) -> None:
    """tests/conftest.py copies one store per worker instead of creating one per test (docs/development.md)."""
    (default,) = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")


@pytest.mark.fresh_store
def test_a_test_marked_fresh_store_starts_without_one(tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.fresh_store
def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path: Path) -> None:
    """Stages starting side by side in a fresh workspace each create the store's client, which creates or
    upgrades its schema: without one process at a time, most failed mid-migration."""
    import subprocess
    import sys
    import time

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_WHEN_TOLD, str(tmp_path), str(i)], stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    (tmp_path / "go").touch()
    errors = [p.communicate(timeout=120)[1].decode()[-300:] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    assert [e.name for e in tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()] == [
        "Default"
    ]
