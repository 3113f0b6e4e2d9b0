"""The retraining flow: its tasks are dvc.yaml's stages, DVC decides what runs and records it, a stage that
says a service did not answer is retried and nothing else is, and a run past its timeout is stopped.

The flow runs here on small DVC repositories whose stages are shell one-liners (seconds); the whole
project pipeline runs in ``tests/test_pipeline_slow.py``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines import retrain as pipeline
from sounding.errors import BadInput
from tests.conftest import REPO, SOUNDING, run_cli, run_dvc, write_params
from tests.pipelines.conftest import dvc_repo, flow_params


def stages_in(root: Path) -> list[str]:
    """dvc.yaml's stages as a reader of the file names them: a ``foreach`` over a list or a params key
    gives one stage per item, ``name@item``."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    names = []
    for name, stage in spec.items():
        items = stage.get("foreach")
        if isinstance(items, str):  # "${train.archs}"
            items = functools.reduce(lambda tree, key: tree[key], items[2:-1].split("."), params)
        names += [f"{name}@{item}" for item in items] if items is not None else [name]
    return names


def check_one_task_per_stage(tasks: list[pipeline.Stage], root: Path) -> None:
    """The flow's tasks are exactly the stages of ``root``'s dvc.yaml, each after those it depends on."""
    assert sorted(t.name for t in tasks) == sorted(stages_in(root))
    position = {t.name: i for i, t in enumerate(tasks)}
    for t in tasks:
        assert all(position[u] < position[t.name] for u in t.upstream), t


def test_the_flow_has_one_task_per_stage_of_dvc_yaml_in_dependency_order() -> None:
    tasks = pipeline.pipeline(REPO)
    check_one_task_per_stage(tasks, REPO)
    by_name = {t.name: t for t in tasks}
    assert {"baselines", "tune@fcn", "train@fcn", "gan", "register"} <= set(by_name)
    assert set(by_name["train@cnn"].upstream) == {"prepare", "tune@cnn"}
    assert set(by_name["gan"].upstream) == {"prepare", "train@cnn"}
    assert {f"train@{a}" for a in ("linear", "mlp", "cnn", "rnn", "fcn")} <= set(by_name["report"].upstream)


def test_a_stage_added_to_dvc_yaml_is_a_task_and_a_stage_without_one_fails_the_check(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["calibrate"] = {"cmd": "true", "deps": ["metrics/cnn.json"], "outs": ["calibration.json"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    tasks = pipeline.pipeline(root)
    check_one_task_per_stage(tasks, root)
    assert next(t for t in tasks if t.name == "calibrate").upstream == ("train@cnn",)
    # A task list that misses the new stage (as a list written by hand would) fails the check.
    with pytest.raises(AssertionError):
        check_one_task_per_stage(pipeline.pipeline(REPO), root)


def test_targets_select_their_stages_and_the_stages_they_depend_on() -> None:
    assert [t.name for t in pipeline.pipeline(REPO, ["train@cnn"])] == ["prepare", "tune@cnn", "train@cnn"]
    with pytest.raises(BadInput, match="no stage train@gpt"):
        pipeline.pipeline(REPO, ["train@gpt"])


# --- Runs on small repositories -------------------------------------------------------------------------

CHAIN = {
    "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
    "b": {
        "foreach": ["x", "y"],
        "do": {"cmd": "cat a.txt > b-${item}.txt && echo ${seed} >> b-${item}.txt", "deps": ["a.txt"],
               "params": ["seed"], "outs": ["b-${item}.txt"]},
    },
    "c": {"cmd": "cat b-x.txt b-y.txt > c.txt", "deps": ["b-x.txt", "b-y.txt"], "outs": ["c.txt"]},
}  # fmt: skip


@pytest.fixture
def prefect_log() -> list[str]:
    """Messages the flow and task runs log."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep()
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    yield messages
    for logger in loggers:
        logger.removeHandler(handler)


def test_dvc_decides_what_runs_and_records_it(prefect_harness: None, tmp_path: Path, prefect_log) -> None:
    root = dvc_repo(tmp_path / "repo", CHAIN)
    params_path = str(root / "params.yaml")
    states = pipeline.retrain(params_path)
    assert states == dict.fromkeys(["a", "b@x", "b@y", "c"], "Completed")
    assert (root / "c.txt").read_text() == "a\n42\na\n42\n"
    assert "Data and pipelines are up to date" in run_dvc("status", cwd=root).stdout
    assert "Running stage" not in run_dvc("repro", cwd=root).stdout
    assert any(m.startswith("b@x: started") for m in prefect_log)
    assert any(m.startswith("b@x: done in ") and m.endswith(" s, recorded in dvc.lock") for m in prefect_log)

    assert pipeline.retrain(params_path) == dict.fromkeys(["a", "b@x", "b@y", "c"], "Skipped")
    assert "b@x: up to date (DVC found nothing changed), skipped" in prefect_log

    write_params(root / "params.yaml", flow_params(seed=7))
    assert pipeline.retrain(params_path) == {
        "a": "Skipped",
        "b@x": "Completed",
        "b@y": "Completed",
        "c": "Completed",
    }
    assert "Data and pipelines are up to date" in run_dvc("status", cwd=root).stdout

    write_params(root / "params.yaml", flow_params(seed=8))
    assert "Running stage 'c'" in run_dvc("repro", cwd=root).stdout
    assert pipeline.retrain(params_path) == dict.fromkeys(["a", "b@x", "b@y", "c"], "Skipped")
    assert pipeline.retrain(params_path, force=True) == dict.fromkeys(["a", "b@x", "b@y", "c"], "Completed")


def test_new_raw_data_reruns_what_reads_it_and_nothing_else(prefect_harness: None, tmp_path: Path) -> None:
    stages = {
        "prepare": {"cmd": "cat data/raw/* > prepared.txt", "deps": ["data/raw"], "outs": ["prepared.txt"]},
        "train": {"cmd": "wc -l < prepared.txt > model.txt", "deps": ["prepared.txt"], "outs": ["model.txt"]},
        "other": {"cmd": "echo 1 > other.txt", "outs": ["other.txt"]},
    }
    root = dvc_repo(tmp_path / "repo", stages)
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "a.csv").write_text("1\n")
    params_path = str(root / "params.yaml")
    assert set(pipeline.retrain(params_path).values()) == {"Completed"}
    assert pipeline.retrain(params_path) == dict.fromkeys(["prepare", "train", "other"], "Skipped")
    (root / "data" / "raw" / "b.csv").write_text("2\n")  # as `dvc pull` of a new data/raw version leaves it
    assert pipeline.retrain(params_path) == {"prepare": "Completed", "train": "Completed", "other": "Skipped"}
    assert (root / "model.txt").read_text().strip() == "2"


def _counted(name: str, then: str) -> str:
    """A command that counts its runs in ``NAME.runs`` (no DVC output), then runs ``then``."""
    return f"echo run >> {name}.runs && {then}"


def test_a_service_that_did_not_answer_is_retried_and_bad_input_is_not(
    prefect_harness: None, tmp_path: Path
) -> None:
    stages = {
        # exit 69 (ServiceUnavailable) on its first run, then succeeds
        "flaky": {"cmd": _counted("flaky", "if [ $(wc -l < flaky.runs) -lt 2 ]; then echo 'error: the MLflow "
                  "server did not answer' >&2; exit 69; fi; echo ok > flaky.txt"), "outs": ["flaky.txt"]},
        "bad": {"cmd": _counted("bad", "echo 'error: data/raw/x.npz has no array y' >&2; exit 2"),
                "outs": ["bad.txt"]},
    }  # fmt: skip
    root = dvc_repo(tmp_path / "repo", stages, flow_params(**{"retrain.retries": 3}))
    with pytest.raises(pipeline.StageFailed, match="data/raw/x.npz has no array y") as failed:
        pipeline.retrain(str(root / "params.yaml"))
    assert failed.value.returncode == 2 and "exited with code 2" in str(failed.value)
    assert (root / "bad.runs").read_text().count("run") == 1
    assert (root / "flaky.runs").read_text().count("run") == 2
    assert "flaky" not in run_dvc("status", "flaky", cwd=root).stdout  # committed after its retry
    cli = run_cli("retrain", cwd=root)  # exits with the failed stage's code, its error on stderr
    assert cli.returncode == 2 and "data/raw/x.npz has no array y" in cli.stderr, cli.stderr[-3000:]


def test_a_run_past_its_timeout_stops_its_stages_and_fails(prefect_harness: None, tmp_path: Path) -> None:
    stages = {"slow": {"cmd": "echo $$ > slow.pid && exec sleep 300", "outs": ["slow.txt"]}}
    root = dvc_repo(tmp_path / "repo", stages, flow_params(**{"retrain.timeout_s": 10}))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="longer than retrain.timeout_s"):
        pipeline.retrain(str(root / "params.yaml"))
    assert time.monotonic() - start < 60
    pid = int((root / "slow.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failed_run_notifies_the_webhook_and_a_run_that_succeeds_publishes_the_leaderboard(
    prefect_harness: None, tmp_path: Path, webhook: tuple[str, list[dict]]
) -> None:
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client

    url, posted = webhook
    stages = {
        "train": {"cmd": "if [ -e broken ]; then echo 'error: params.yaml: train.lr must be > 0' >&2; exit 2; "
                  "fi; echo ok > model.txt", "outs": ["model.txt"]},
        "report": {"cmd": "mkdir -p reports && printf '| arch | test acc |\\n| cnn | 0.94 |\\n"
                   "![chart](leaderboard.png)\\n' > reports/leaderboard.md", "deps": ["model.txt"],
                   "outs": ["reports"]},
    }  # fmt: skip
    root = dvc_repo(tmp_path / "repo", stages, flow_params(**{"retrain.notify": url}))
    (root / "broken").touch()
    failed = pipeline.retrain(str(root / "params.yaml"), return_state=True)
    assert failed.is_failed()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(failed.state_details.flow_run_id)
    assert len(posted) == 1
    assert posted[0]["subject"] == f"Sounding retrain {run.name}: Failed"
    text = posted[0]["text"]
    assert f"'{run.name}' ({run.id})" in text and str(root) in text
    assert "stage train:" in text and "train.lr must be > 0" in text

    (root / "broken").unlink()
    done = pipeline.retrain(str(root / "params.yaml"), return_state=True)
    assert done.is_completed() and len(posted) == 1  # a run that succeeds tells nobody
    leaderboard = Artifact.get("leaderboard")
    assert leaderboard.flow_run_id == done.state_details.flow_run_id
    assert leaderboard.type == "markdown" and leaderboard.data == "| arch | test acc |\n| cnn | 0.94 |"


@pytest.mark.parametrize("workers", [2, 1])
def test_independent_stages_run_side_by_side_up_to_compute_workers_each_on_its_share_of_the_cpus(
    prefect_harness: None, tmp_path: Path, workers: int
) -> None:
    cpus = f"{sys.executable} -c 'import os; print(*sorted(os.sched_getaffinity(0)))' > {{0}}.cpus"
    timed = "date +%s.%N > {0}.txt && sleep 2 && date +%s.%N >> {0}.txt && " + cpus
    stages = {
        name: {"cmd": timed.format(name), "outs": [f"{name}.txt", f"{name}.cpus"]} for name in ("a", "b")
    }
    root = dvc_repo(
        tmp_path / "repo", stages, flow_params(**{"compute.workers": workers, "retrain.max_workers": 2})
    )
    assert pipeline.retrain(str(root / "params.yaml")) == {"a": "Completed", "b": "Completed"}
    (a_start, a_end), (b_start, b_end) = (
        map(float, (root / f"{name}.txt").read_text().split()) for name in ("a", "b")
    )
    overlapped = a_start < b_end and b_start < a_end  # each started before the other ended
    assert overlapped == (workers == 2)  # compute.workers: 1 bounds the flow to one stage at a time
    # Each stage command ran on its share of the CPUs (what its `compute.workers: auto` counts): two
    # disjoint halves of them when two run side by side; all of them when one runs at a time.
    mine = os.sched_getaffinity(0)
    a, b = ({int(c) for c in (root / f"{name}.cpus").read_text().split()} for name in ("a", "b"))
    if workers == 2 and len(mine) >= 2:
        assert not a & b and a | b == mine and abs(len(a) - len(b)) <= 1
    else:
        assert a == b == mine


def test_a_freed_slot_goes_to_the_first_ready_stage_in_dvc_yaml_order(
    prefect_harness: None, tmp_path: Path
) -> None:
    """`late` becomes ready after `first` ends, when `filler_b` has long been ready: listed before it, it
    gets the slot `first` frees (stages submitted as they became ready would run in that order instead).
    `filler_a` holds the other slot 5 s longer than `first`: on a loaded machine (three pytest workers on
    two cores) a 2 s margin was eaten by the stages' own start-ups and `filler_b` got there first."""
    started = "date +%s.%N > {0}.txt && sleep {1}"
    stages = {
        "first": {"cmd": started.format("first", 1), "outs": ["first.txt"]},
        "late": {"cmd": started.format("late", 0), "deps": ["first.txt"], "outs": ["late.txt"]},
        "filler_a": {"cmd": started.format("filler_a", 6), "outs": ["filler_a.txt"]},
        "filler_b": {"cmd": started.format("filler_b", 0), "outs": ["filler_b.txt"]},
    }
    root = dvc_repo(
        tmp_path / "repo", stages, flow_params(**{"compute.workers": 2, "retrain.max_workers": 2})
    )
    assert set(pipeline.retrain(str(root / "params.yaml")).values()) == {"Completed"}
    start = {name: float((root / f"{name}.txt").read_text()) for name in stages}
    assert start["late"] < start["filler_b"]


def test_a_flow_killed_mid_stage_leaves_nothing_half_recorded(tmp_path: Path) -> None:
    stages = {
        "first": {"cmd": "echo 1 > first.txt", "outs": ["first.txt"]},
        "slow": {"cmd": "touch started && sleep 6 && echo ok > slow.txt", "deps": ["first.txt"],
                 "outs": ["slow.txt"]},
    }  # fmt: skip
    root = dvc_repo(tmp_path / "repo", stages)
    env = dict(os.environ, PYTHONWARNINGS="ignore", PREFECT_HOME=str(tmp_path / "prefect"))
    flow = subprocess.Popen([SOUNDING, "retrain"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (root / "started").exists():
        assert flow.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    # SIGKILL to the flow's process group (the flow and Prefect's temporary server), as a scheduler stops a
    # job: no hook, no cleanup. The stage command, in a process group of its own, goes on.
    os.killpg(flow.pid, signal.SIGKILL)
    flow.wait()
    # The rerun waits for the orphaned command (it holds the workspace), then runs `slow` again: DVC never
    # recorded it.
    again = subprocess.run([SOUNDING, "retrain"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split() == ["first:", "Skipped", "slow:", "Completed"]
    assert "Data and pipelines are up to date" in run_dvc("status", cwd=root).stdout
    assert (root / "slow.txt").read_text() == "ok\n"


def test_two_runs_at_once_run_each_stage_once(prefect_harness: None, tmp_path: Path, prefect_log) -> None:
    stages = {"a": {"cmd": _counted("a", "sleep 3 && echo a > a.txt"), "outs": ["a.txt"]}}
    root = dvc_repo(tmp_path / "repo", stages)
    results: list[dict] = []
    runs = [
        threading.Thread(target=lambda: results.append(pipeline.retrain(str(root / "params.yaml"))))
        for _ in "ab"
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=300)
    assert sorted(r["a"] for r in results) == ["Completed", "Skipped"]
    assert (root / "a.runs").read_text().count("run") == 1
    assert any(
        m.startswith("waiting for the workspace: another Sounding command is writing") for m in prefect_log
    )


def test_bad_params_fail_before_any_work(prefect_harness: None, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        pipeline.retrain("missing.yaml")
    write_params(tmp_path / "params.yaml", flow_params())
    with pytest.raises(BadInput, match="allowed: linear"):
        pipeline.retrain("params.yaml", archs=["transformer"])
    with pytest.raises(BadInput, match="not inside a DVC repository"):
        pipeline.retrain("params.yaml")
    result = run_cli("retrain", "--arch", "transformer", cwd=tmp_path)
    assert result.returncode == 2 and "unknown architecture" in result.stderr


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
