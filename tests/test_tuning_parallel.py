"""Parallel tuning: batches trained side by side give the one-process study; processes sharing one study
(sqlite file, PostgreSQL) keep exact trial counts; dead processes' trials are retried."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback

from sounding.config import load_params
from sounding.tuning import BudgetLock, storage_url, study_name
from tests.conftest import SOUNDING, ctrl_c_restored, prepare_in, run_cli, tiny_params, write_params

pytestmark = pytest.mark.slow


def _setup(tmp_path: Path, **overrides: object) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = {"tune.startup_trials": 2, "tune.warmup_epochs": 2, "tune.heartbeat_s": 1, "tune.grace_s": 3}
    write_params(tmp_path / "params.yaml", tiny_params(**{**settings, **overrides}))
    prepare_in(tmp_path)
    return tmp_path


def _study(root: Path, arch: str, storage: str | None = None) -> optuna.Study:
    params = load_params(root / "params.yaml", [f"tune.storage={storage}"] if storage else [])
    sha = json.loads((root / "data/prepared/manifest.json").read_text())["sha256"]
    url = storage or storage_url(params, root / "tuning")
    return optuna.load_study(study_name=study_name(params, arch, sha), storage=url)


def _assert_exact(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == n, states
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # unique, no gaps
    return trials


def _tune(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [SOUNDING, "tune", "mlp", "-q", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        preexec_fn=ctrl_c_restored,
    )


def _trials(study: optuna.Study) -> list[tuple]:
    return [(t.state.name, t.params, t.value, t.intermediate_values) for t in study.get_trials()]


def test_a_batch_trained_in_two_processes_gives_the_study_of_one_process(tmp_path: Path) -> None:
    # A wide learning-rate range: some trials are clearly worse from the first epoch, so some are pruned
    # (against trials of earlier batches only, whichever process reaches an epoch first).
    overrides = {
        "tune.n_trials": 6,
        "tune.epochs": 6,
        "tune.warmup_epochs": 1,
        "tune.space.lr": {"low": 1e-5, "high": 3e-2, "log": True},
    }
    studies, first = [], _setup(tmp_path / "workers1", **overrides)
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        if workers > 1:  # the same params and prepared data, in a folder of its own
            shutil.copytree(first, root, ignore=shutil.ignore_patterns("tuning"))
        result = run_cli("tune", "mlp", "-q", "--workers", str(workers), cwd=root)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "database is locked" not in result.stderr  # two processes on the default sqlite study
        study = _study(root, "mlp")
        _assert_exact(study, 6)
        assert len({t.user_attrs["worker"] for t in study.trials}) == workers
        studies.append(_trials(study))
    assert studies[0] == studies[1]
    assert {state for state, *_ in studies[0]} == {"COMPLETE", "PRUNED"}


def test_two_worker_processes_on_postgres_run_exactly_n_trials(tmp_path: Path, postgres_url: str) -> None:
    import sqlalchemy

    # min_gain 0: the best trial (never below the baseline) is always confirmed on 2 fresh seeds.
    root = _setup(
        tmp_path, **{"tune.n_trials": 6, "tune.epochs": 15, "tune.min_gain": 0.0, "tune.confirm_seeds": 2}
    )
    params = load_params(root / "params.yaml", [f"tune.storage={postgres_url}"])
    sha = json.loads((root / "data/prepared/manifest.json").read_text())["sha256"]
    budget = BudgetLock(postgres_url, study_name(params, "mlp", sha))
    waiting = sqlalchemy.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND ((classid::bigint << 32) | objid::bigint) = :k"
    )
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    # The test holds the study's budget lock until both processes wait for it: each then asks its first
    # batch (2 of the 6 trials) before the other can ask again, so both take part however fast either is.
    with budget, engine.connect() as conn:
        procs = [_tune(root, "--storage", postgres_url) for _ in range(2)]
        deadline = time.time() + 120
        while conn.execute(waiting, {"k": budget.key}).scalar() < 2:
            assert time.time() < deadline, "the two processes never both waited for the budget lock"
            assert all(proc.poll() is None for proc in procs), [proc.communicate() for proc in procs]
            time.sleep(0.2)
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    study = _study(root, "mlp", postgres_url)
    trials = _assert_exact(study, 6)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    # Each best trial a worker ended with is confirmed once (2 seeds × baseline and best), not once per
    # worker: the two may end on different bests when one finishes while the other's last trial runs.
    confirmed = [key for key in study.user_attrs if key.startswith("confirm: ")]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.confirm != ''")
    assert confirmed and len(runs) == 4 * len(confirmed), (confirmed, len(runs))


def test_a_worker_killed_in_the_baseline_trial_fails_it_the_retry_resumes_it_and_it_decides_adoption(
    tmp_path: Path, postgres_url: str, figures: Counter[str]
) -> None:
    """Fault 5 of docs/reliability.md: ``kill -9`` of the worker running the baseline trial (trial 0, the
    params' own values). The trial becomes FAIL, is retried with the same values from its checkpoint, the
    study ends with exactly ``tune.n_trials`` trials, and the result compares the best with that retry."""
    # A checkpoint every epoch: the retry then resumes at the epoch after the last one reported.
    overrides = {"tune.n_trials": 4, "tune.epochs": 40, "tune.pruner": "none"}
    root = _setup(tmp_path, **overrides)
    victim = _tune(root, "--storage", postgres_url)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the victim is mid-trial, past a checkpointed epoch
        time.sleep(0.2)
        try:
            running = _study(root, "mlp", postgres_url).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # study not created yet
            continue
        if running and len(running[0].intermediate_values) >= 3:
            break
    else:
        pytest.fail("the first worker never got mid-trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0].number
    assert killed == 0 and running[0].user_attrs["baseline"]  # the worker died in the baseline trial

    survivor = _tune(root, "--storage", postgres_url)
    out, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, out
    trials = _assert_exact(_study(root, "mlp", postgres_url), 4)
    assert trials[killed].state.name == "FAIL"
    retry = next(t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed)
    assert retry.state.name == "COMPLETE" and retry.params == trials[killed].params
    # The retry resumed the dead trial's checkpoint, not epoch 0: the victim was killed once it had reported
    # three epochs (0–2), and the checkpoint can trail the last report by one (a kill between the two), so
    # the retry reports from epoch 2 at the earliest (a CI run under load resumed there).
    assert min(retry.intermediate_values) >= 2
    best = json.loads((root / "tuning/mlp/best.json").read_text())
    assert best["baseline_value"] == retry.value and best["baseline_state"] == "complete"
    assert best["adopted"] in ("baseline", "tuned")
    figures["faults injected"] += 1
    figures["trials checked"] += len(trials)


def test_an_interrupted_tune_reruns_into_the_same_study_keeping_its_completed_trials(
    tmp_path: Path, figures: Counter[str]
) -> None:
    # Interrupted once two trials have finished training (each writes its model.ckpt; the first is then
    # surely COMPLETE): a third trial of the same length is still to run when the Ctrl-C arrives, however
    # loaded the machine.
    n = 3
    root = _setup(tmp_path, **{"tune.n_trials": n, "tune.epochs": 200, "tune.pruner": "none"})
    first = _tune(root)
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and first.poll() is None
        and len(list(root.glob("tuning/mlp/trials/*/*/model.ckpt"))) < 2
    ):
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = first.communicate(timeout=120)
    assert first.returncode != 0, out
    assert "Traceback" not in out
    before = {
        t.number: (t.params, t.value)
        for t in _study(root, "mlp").get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    }
    assert 1 <= len(before) < n
    assert not _study(root, "mlp").get_trials(states=(optuna.trial.TrialState.RUNNING,))

    again = run_cli("tune", "mlp", "-q", cwd=root)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = _assert_exact(_study(root, "mlp"), n)
    assert {t.number: (t.params, t.value) for t in trials if t.number in before} == before
    figures["faults injected"] += 1
    figures["trials checked"] += len(trials)
