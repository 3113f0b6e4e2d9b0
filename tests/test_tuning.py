"""``sounding tune``: the study, its outputs and MLflow runs, resume, failures, and the tuned ``train``."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import optuna
import pytest

from sounding import stages, tracking
from sounding.errors import BadInput
from sounding.report import leaderboard
from sounding.tuning import storage_url, study_name, tune
from tests.conftest import run_cli, tiny_params, write_params


def tune_params(**overrides: object):
    """Three short trials, pruning allowed from the first epoch."""
    base = {
        "tune.n_trials": 3,
        "tune.epochs": 3,
        "tune.startup_trials": 1,
        "tune.warmup_epochs": 0,
    }
    return tiny_params(**{**base, **overrides})


def test_a_best_trial_gaining_less_than_min_gain_leaves_the_params_values(prepared: Path) -> None:
    params = tune_params(**{"tune.min_gain": 1.0})
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["adopted"] == "baseline" and summary["overrides"] == {}
    assert (summary["baseline_state"], summary["baseline_source"]) == ("complete", "trial 0")
    metrics = stages.train_architecture(
        params,
        "mlp",
        prepared,
        "models",
        "metrics.json",
        "plots",
        progress=False,
        tuned="tuning/mlp/best.json",
    )
    assert metrics["adopted"] == "baseline" and "| baseline kept | same |" in leaderboard(
        [metrics], "mnist1d"
    )
    assert metrics["untuned"]["gain"] == 0 and not metrics["untuned"]["trained"]  # what trained is untuned


def test_a_baseline_outside_the_search_space_is_trained_beside_the_study(prepared: Path) -> None:
    # weight_decay 0 (the published setting) lies below the log range: it cannot be a trial.
    params = tune_params(**{"train.weight_decay": 0.0, "tune.min_gain": 1.0})
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["baseline_source"] == "reference fit" and summary["baseline_state"] == "complete"
    assert 0 < summary["baseline_value"] <= 1
    assert summary["adopted"] == "baseline" and summary["overrides"] == {}
    study = _study(params, "mlp", prepared)
    assert not any(t.user_attrs.get("baseline") for t in study.trials)  # not a trial of the study
    runs = tracking.client(params.tracking.uri).search_runs(
        [tracking.client(params.tracking.uri).get_experiment_by_name("sounding-tuning").experiment_id],
        "tags.baseline = 'reference fit'",
    )
    assert len(runs) == 1 and runs[0].data.params["weight_decay"] == "0.0"
    again = tune(params.with_overrides({"tune.n_trials": 4}), "mlp", prepared, "tuning/mlp", progress=False)
    assert again["baseline_value"] == summary["baseline_value"]  # remembered with the study, not refitted
    assert (
        len(
            tracking.client(params.tracking.uri).search_runs(
                [runs[0].info.experiment_id], "tags.baseline = 'reference fit'"
            )
        )
        == 1
    )


def test_a_failed_baseline_is_retried_and_without_it_nothing_is_adopted(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sounding.training as training

    real_fit, failures = training.fit, []

    def baseline_fails(p, *args, **kwargs):
        if (p.models.mlp.dropout, p.train.gradient_clip_val) == (0.0, 0.0) and len(failures) < fail_times:
            failures.append(1)
            raise RuntimeError("injected failure")
        return real_fit(p, *args, **kwargs)

    monkeypatch.setattr(training, "fit", baseline_fails)
    params = tune_params(**{"compute.workers": 1})  # one process: the patched fit runs where the trials do
    fail_times = 1  # once: its retry (the same values) completes, and decides
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["baseline_state"] == "complete" and summary["baseline_source"] != "trial 0"
    trials = _study(params, "mlp", prepared).trials
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["baseline"]

    fail_times = 99  # every time: no decision, no best.json
    other = params.with_overrides({"seed": 7})
    with pytest.raises(BadInput, match=r"the baseline \(trial 0: the params' own values\) failed, retried 1"):
        tune(other, "mlp", prepared, "tuning/other", progress=False)
    assert not Path("tuning/other/best.json").exists()


@pytest.mark.parametrize(("best_correct", "adopted"), [(268, "tuned"), (267, "baseline")])
def test_min_gain_is_counted_in_validation_samples_at_its_boundary(best_correct: int, adopted: str) -> None:
    from types import SimpleNamespace

    import numpy as np

    from sounding.tuning import _summarise

    # 400 validation samples, min_gain 0.01: 4 samples. Accuracies arrive as float32, where 268/400 − 264/400
    # is 0.0099999…, below 0.01: the gain must be counted, not compared as floats.
    params = tune_params(**{"tune.min_gain": 0.01})
    data = SimpleNamespace(sha256="0" * 64, val=SimpleNamespace(y=np.zeros(400)))
    dist = optuna.distributions.FloatDistribution(0.0, 0.5)
    study = optuna.create_study(direction="maximize")
    for value, attrs in ((264, {"baseline": True}), (best_correct, {})):
        study.add_trial(
            optuna.trial.create_trial(
                params={"dropout": value / 1000},
                distributions={"dropout": dist},
                value=float(np.float32(value / 400)),
                user_attrs=attrs,
            )
        )
    space = {"dropout": ("models.mlp.dropout", None)}
    summary = _summarise(params, "mlp", data, study, space, set(), 1.0)
    assert summary["adopted"] == adopted
    assert (summary["gain_samples"], summary["min_gain_samples"]) == (best_correct - 264, 4)
    assert summary["overrides"] == (
        {} if adopted == "baseline" else {"models.mlp.dropout": best_correct / 1000}
    )


def _finished_study(values: list[int], n_val: int, baseline: bool = True) -> optuna.Study:
    """A study whose complete trials classified ``values`` of ``n_val`` samples right (trial 0 the
    baseline), as float32 ratios like real trials."""
    import numpy as np

    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.0, 0.5)
    for i, right in enumerate(values):
        study.add_trial(
            optuna.trial.create_trial(
                params={"dropout": i / 100},
                distributions={"dropout": dist},
                value=float(np.float32(right / n_val)),
                user_attrs={"baseline": True} if i == 0 and baseline else {},
            )
        )
    return study


@pytest.mark.parametrize(
    ("values", "min_gain", "why"),
    [
        ([38, 40], 0.01, "trial 1 classifies all 40 judged samples right"),  # the best cannot be beaten
        ([40, 40], 0.01, "trial 0 classifies all 40"),  # the earliest of equal values stays the best
        (
            [39, 37],
            0.05,
            "the baseline (trial 0) classifies 39 of 40 judged samples right: a trial scoring "
            "all 40 would gain 1, fewer than tune.min_gain=0.05 (2 samples)",
        ),
        ([39, 37], 0.01, None),  # a trial scoring all 40 would gain the 1 sample needed
        ([38], 0.05, None),  # 40 would gain 2: enough
        ([], 0.01, None),  # no complete trial: a best.json needs one
    ],
)
def test_a_study_is_settled_when_no_further_trial_can_change_its_outcome(
    values: list[int], min_gain: float, why: str | None
) -> None:
    from sounding.tuning import settled

    reason = settled(tune_params(**{"tune.min_gain": min_gain}), _finished_study(values, 40), 40)
    assert reason == why if why is None else why in reason
    # Without a baseline only the best's ceiling settles a study.
    no_baseline = tune_params(**{"tune.min_gain": min_gain, "tune.baseline": False})
    reason = settled(no_baseline, _finished_study(values, 40, baseline=False), 40)
    assert (reason is not None) == (max(values, default=0) == 40)


def test_a_study_stops_once_a_trial_classifies_every_judged_sample_right(tmp_path: Path) -> None:
    """Data a linear model separates at once: the baseline trial scores every held-out sample, so the
    study stops after the batch that holds it instead of running the rest of its budget."""
    import numpy as np

    from sounding.data.prepare import prepare

    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    x = (2.0 * y - 1)[:, None] * 3 + rng.normal(scale=0.1, size=(80, 12))
    np.savez(tmp_path / "easy.npz", x=x.astype(np.float32), y=y)
    params = tune_params(
        **{
            "data.source": "npz",
            "data.path": str(tmp_path / "easy.npz"),
            "tune.n_trials": 8,
            "train.lr_scaling": "none",  # 3 epochs of one batch of 72: separated at 0.01, not yet at 0.0085
        }
    )
    prepare(params.data, params.seed, tmp_path / "prepared")
    summary = tune(params, "linear", tmp_path / "prepared", "tuning/linear", progress=False)
    assert summary["baseline_value"] == 1.0 and summary["adopted"] == "baseline"
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == params.tune.batch  # not 8
    assert summary["settled"].startswith("trial 0 classifies all")
    assert json.loads(Path("tuning/linear/best.json").read_text())["settled"] == summary["settled"]
    parent = tracking.client(params.tracking.uri).get_run(
        _study(params, "linear", tmp_path / "prepared").user_attrs["mlflow_run_id"]
    )
    assert parent.data.tags["settled"] == summary["settled"]
    # A rerun with a larger budget finds it settled too: no trial runs.
    again = tune(
        params.with_overrides({"tune.n_trials": 12}),
        "linear",
        tmp_path / "prepared",
        "tuning/linear",
        progress=False,
    )
    assert again["counts"] == summary["counts"] and again["settled"] == summary["settled"]


def test_a_best_trial_is_adopted_only_if_its_gain_holds_on_fresh_seeds(prepared: Path) -> None:
    """The best trial (which passed ``min_gain``) and the baseline are trained again on fresh seeds, paired;
    the decision follows their mean gain in validation samples, and each fit is an MLflow run."""
    params = tune_params(**{"tune.min_gain": 0.0, "tune.confirm_seeds": 2, "train.n_seeds": 3})
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    c = summary["confirm"]
    assert c["seeds"] == [params.seed + 3, params.seed + 4]  # after the training seeds
    n_val = summary["val_samples"]
    assert c["gain_samples"] == [
        round((b - a) * n_val) for a, b in zip(c["baseline"], c["best"], strict=True)
    ]
    assert c["lower_gain_samples"] == min(c["gain_samples"])  # two seeds: mean less its standard error
    assert summary["adopted"] == ("tuned" if min(c["gain_samples"]) >= 0 else "baseline")
    assert bool(summary["overrides"]) == (summary["adopted"] == "tuned")
    client = tracking.client(params.tracking.uri)
    parent = client.get_run(_study(params, "mlp", prepared).user_attrs["mlflow_run_id"])
    assert parent.data.tags["adopted"] == summary["adopted"]
    assert parent.data.metrics["confirm_lower_gain_samples"] == c["lower_gain_samples"]
    assert parent.data.metrics["baseline_val_acc"] == pytest.approx(summary["baseline_value"])
    runs = client.search_runs(
        [client.get_experiment_by_name("sounding-tuning").experiment_id], "tags.confirm != ''"
    )
    fits = sorted((r.data.tags["confirm"], int(r.data.params["seed"])) for r in runs)
    assert fits == sorted((role, s) for role in ("baseline", "best") for s in c["seeds"])
    assert {r.info.status for r in runs} == {"FINISHED"}
    # A rerun (or another worker of the study) reads the confirmation from the study: no fit again.
    again = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert again["confirm"] == c and again["adopted"] == summary["adopted"]
    assert len(client.search_runs([runs[0].info.experiment_id], "tags.confirm != ''")) == len(runs)


@pytest.mark.parametrize(
    ("best", "adopted"), [((22, 20), "tuned"), ((22, 17), "baseline"), ((24, 18), "baseline")]
)
def test_the_fresh_seeds_decide_on_the_mean_paired_gain(
    prepared: Path, monkeypatch: pytest.MonkeyPatch, best: tuple, adopted: str
) -> None:
    """With min_gain 0 the best trial always passes the study's gate; on the fresh seeds, gains of +2 and
    0 samples (mean +1 ± 1) adopt it; +2 and −3 (mean −0.5) do not, nor do +4 and −2: their mean (+1) is
    positive, but not once its standard error (3) is taken off."""
    from sounding import tuning

    fits = {"baseline": [20, 20], "best": list(best)}
    monkeypatch.setattr(tuning, "run_check", lambda job: fits[job.role].pop(0) / 48)
    params = tune_params(**{"tune.min_gain": 0.0, "tune.confirm_seeds": 2})
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["val_samples"] == 48 and summary["confirm"]["gain_samples"] == [best[0] - 20, best[1] - 20]
    assert summary["adopted"] == adopted and bool(summary["overrides"]) == (adopted == "tuned")


def _study(params, arch: str, prepared: Path) -> optuna.Study:
    sha = json.loads((prepared / "manifest.json").read_text())["sha256"]
    return optuna.load_study(study_name=study_name(params, arch, sha), storage=storage_url(params))


def test_tune_writes_best_params_counts_plots_and_nested_mlflow_runs(prepared: Path) -> None:
    params = tune_params(**{"tune.min_gain": 0.0})
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)

    best = json.loads(Path("tuning/mlp/best.json").read_text())
    assert best == json.loads(json.dumps(summary))
    assert set(best["params"]) == {"dropout", "weight_decay", "gradient_clip_val"}
    assert best["overrides"] == {
        "models.mlp.dropout": best["params"]["dropout"],
        "train.weight_decay": best["params"]["weight_decay"],
        "train.gradient_clip_val": best["params"]["gradient_clip_val"],
    }
    assert best["counts"]["complete"] + best["counts"]["pruned"] == 3 and best["counts"]["failed"] == 0
    assert 0 < best["value"] <= 1 and best["value"] >= best["baseline_value"]
    assert best["adopted"] == "tuned"
    assert best["storage"] == "sqlite:///tuning/optuna.db"  # as given: no folder of this machine
    assert 0 < best["fit_s"] < best["wall_s"]
    for name in ("history", "importances", "intermediate", "parallel"):
        assert Path(f"tuning/mlp/plots/{name}.png").stat().st_size > 1000

    trials = _study(params, "mlp", prepared).trials
    assert best["fit_s"] == pytest.approx(sum(t.user_attrs["fit_s"] for t in trials))  # the baseline counts
    trial0 = trials[0]  # the baseline: params as they are
    assert trial0.params == {"dropout": 0.0, "weight_decay": 5e-4, "gradient_clip_val": 0.0}

    client = tracking.client(params.tracking.uri)
    exp = client.get_experiment_by_name("sounding-tuning")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_val_acc"] == best["value"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["trial_state"] for c in children} <= {"COMPLETE", "PRUNED"}
    assert all(set(c.data.params) >= {"dropout", "weight_decay", "gradient_clip_val"} for c in children)
    complete = next(c for c in children if c.data.tags["trial_state"] == "COMPLETE")
    steps = tracking.logged_steps(params.tracking.uri, complete.info.run_id, "val/acc")
    assert steps == [0, 1, 2], (complete.info, complete.data.metrics, complete.data.tags)  # per-epoch metrics
    # Each complete trial's row holds the value Optuna was told; the best of them is the study's best.
    values = {c.data.metrics.get("objective") for c in children if c.data.tags["trial_state"] == "COMPLETE"}
    assert best["value"] in values and None not in values
    assert all("objective" not in c.data.metrics for c in children if c.data.tags["trial_state"] == "PRUNED")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tuning")}
    assert {"tuning/history.png", "tuning/best.json"} <= artifacts


def test_rerun_continues_the_same_study_and_keeps_completed_trials(prepared: Path) -> None:
    tune(tune_params(**{"tune.n_trials": 2}), "mlp", prepared, "tuning/mlp", progress=False)
    first = [(t.number, t.params, t.value) for t in _study(tune_params(), "mlp", prepared).trials]
    summary = tune(tune_params(**{"tune.n_trials": 4}), "mlp", prepared, "tuning/mlp", progress=False)
    trials = _study(tune_params(), "mlp", prepared).trials
    assert [(t.number, t.params, t.value) for t in trials[:2]] == first
    assert len(trials) == 4 and summary["counts"]["complete"] + summary["counts"]["pruned"] == 4


def test_raising_and_nan_trials_fail_and_the_study_goes_on(
    prepared: Path, monkeypatch: pytest.MonkeyPatch, figures: Counter[str]
) -> None:
    import sounding.training as training

    real_fit, calls = training.fit, []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        result = real_fit(*args, **kwargs)
        if len(calls) == 3:
            result.metrics["val/acc"] = math.nan
        return result

    monkeypatch.setattr(training, "fit", flaky_fit)
    # One process: the patched fit runs where the trials do.
    params = tune_params(**{"tune.pruner": "none", "compute.workers": 1})
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["counts"] == {"complete": 3, "pruned": 0, "failed": 2}
    states = [t.state.name for t in _study(params, "mlp", prepared).trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    client = tracking.client(params.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("sounding-tuning").experiment_id])
    raised = next(r for r in runs if r.data.tags.get("optuna_trial") == "1")
    assert raised.info.status == "FAILED" and raised.data.tags["trial_state"] == "FAIL"
    figures["faults injected"] += 2
    figures["trials checked"] += len(states)


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruners_stop_unpromising_trials_early(prepared: Path, pruner: str) -> None:
    params = tune_params(
        **{
            "tune.pruner": pruner,
            # Nine: Hyperband deals trials to brackets by a hash of the study name (which changes with any
            # training param), and a bracket's first trials go on; with six, every early stop could miss.
            "tune.n_trials": 9,
            "tune.epochs": 4,
            "tune.baseline": False,
            # A wide learning-rate range makes some trials clearly worse than others from the first epoch.
            "tune.space.lr": {"low": 1e-5, "high": 3e-2, "log": True},
        }
    )
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["counts"]["pruned"] >= 1
    assert summary["epochs_run"] < summary["epochs_budget"]
    pruned = [t for t in _study(params, "mlp", prepared).trials if t.state.name == "PRUNED"]
    assert any(len(t.intermediate_values) < 4 for t in pruned)  # stopped before its last epoch


def test_disabled_tuning_writes_an_empty_result_that_train_accepts(prepared: Path) -> None:
    params = tune_params(**{"tune.enabled": False})
    summary = tune(params, "linear", prepared, "tuning/linear", progress=False)
    assert summary["enabled"] is False and summary["overrides"] == {}
    assert not Path("tuning/optuna.db").exists()
    metrics = stages.train_architecture(
        params,
        "linear",
        prepared,
        "models/linear",
        "results/linear.json",
        "plots/linear",
        progress=False,
        tuned="tuning/linear/best.json",
    )
    assert metrics["tuned"] == {}


def test_train_with_tuned_values_logs_them_and_refuses_another_dataset(prepared: Path) -> None:
    params = tune_params()
    sha = json.loads((prepared / "manifest.json").read_text())["sha256"]
    best = {"arch": "mlp", "data_sha256": sha, "overrides": {"models.mlp.dropout": 0.25}, "adopted": "tuned"}
    Path("best.json").write_text(json.dumps(best))
    metrics = stages.train_architecture(
        params,
        "mlp",
        prepared,
        "models/mlp",
        "results/mlp.json",
        "plots/mlp",
        progress=False,
        tuned="best.json",
        metrics_path="metrics.json",
    )
    assert metrics["tuned"] == {"models.mlp.dropout": 0.25}
    # The params' own values (dropout 0) trained beside them on the same seed: the paired gain on test.
    untuned = metrics["untuned"]
    (reference,) = untuned["seeds"]
    assert untuned["trained"] and reference["seed"] == metrics["seeds"][0]["seed"]
    assert untuned["gain"] == pytest.approx(metrics["test_acc"] - reference["test/acc"])
    row = (
        f"| tuned: dropout 0.25 | {untuned['test_acc']:.3f} ± 0.000, {100 * untuned['gain']:+.2f} ± 0.00 pp |"
    )
    assert row in leaderboard([metrics], "mnist1d")
    ref = tracking.client(params.tracking.uri).get_run(reference["run_id"])
    assert ref.info.run_name == "mlp-seed42-untuned" and ref.data.tags["reference"] == "untuned"
    assert ref.data.params["models.mlp.dropout"] == "0.0" and ref.info.status == "FINISHED"
    assert ref.data.metrics["test/acc"] == reference["test/acc"]
    run = tracking.client(params.tracking.uri).get_run(metrics["seeds"][0]["run_id"])
    assert run.data.params["models.mlp.dropout"] == "0.25"
    # What shaped the run, and nothing of the other architectures; the data as the run's dataset input.
    assert {k.split(".")[1] for k in run.data.params if k.startswith("models.")} == {"mlp"}
    assert {k.split(".")[0] for k in run.data.params} == {"seed", "data", "train", "models", "compute"}
    (dataset,) = run.inputs.dataset_inputs
    assert (
        dataset.dataset.digest == metrics["data_sha256"][:36] and dataset.dataset.name == params.data.source
    )
    assert dataset.dataset.source == str(Path(prepared).resolve())
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "train")]

    Path("other.json").write_text(json.dumps({**best, "data_sha256": "0" * 64}))
    with pytest.raises(BadInput, match="tuned on other data"):
        stages.train_architecture(
            params, "mlp", prepared, "models/mlp", "results/mlp.json", "plots/mlp", tuned="other.json"
        )
    assert json.loads(Path("results/mlp.json").read_text())["tuned"] == best["overrides"]  # kept


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.space.weight_decay={low: 0.1, high: 0.001, log: true}", "must not exceed high"),
        ("tune.space.dropout={low: -0.1, high: 0.5}", "dropout must lie in [0, 1)"),
        ("tune.pruner=sometimes", "'median', 'hyperband' or 'none'"),
        ("tune.storage=mysql://db/optuna", "sqlite:///PATH or postgresql://"),
    ],
)
def test_bad_search_settings_exit_2_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    write_params(tmp_path / "params.yaml", tiny_params())
    result = run_cli("tune", "mlp", "-S", override, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "tuning").exists()


@pytest.mark.parametrize("pruner", ["none", "hyperband", "median"])
def test_trials_train_as_long_as_train_unless_the_architecture_has_its_own_epochs(
    prepared: Path, pruner: str
) -> None:
    overrides = {"tune.epochs": None, "train.epochs": 2, "tune.n_trials": 2, "tune.pruner": pruner}
    params = tune_params(**overrides)
    assert params.tune_epochs("mlp") == 2
    assert params.with_overrides({"tune.epochs_by_arch": {"mlp": 4}}).tune_epochs("mlp") == 4
    summary = tune(params, "mlp", prepared, "tuning/mlp", progress=False)
    assert summary["epochs_budget"] == 4 and 2 <= summary["epochs_run"] <= 4


def test_ctrl_c_interrupts_a_trial_at_once_but_optunas_bookkeeping_only_when_done(
    request: pytest.FixtureRequest,
) -> None:
    import os
    import signal

    from sounding.tuning import _InterruptGate

    # Python's own handler, as in a terminal: a test run started in the background inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    def ctrl_c(*_: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    # Arriving after the objective (the callback runs after Optuna's tell): held until asked for.
    study = optuna.create_study(direction="maximize")
    reached = False
    with pytest.raises(KeyboardInterrupt), _InterruptGate() as gate:
        study.optimize(gate.interruptible(lambda t: 1.0), n_trials=1, callbacks=[ctrl_c])
        reached = True
        gate.raise_held()
    assert reached and [t.state.name for t in study.trials] == ["COMPLETE"]

    # Arriving while the objective runs: raised there, and the trial is recorded as FAIL.
    def trains(trial: optuna.Trial) -> float:
        ctrl_c()
        return 1.0

    with pytest.raises(KeyboardInterrupt), _InterruptGate() as gate:
        study.optimize(gate.interruptible(trains), n_trials=1)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the gate restores the handler


def test_a_long_study_plots_its_intermediate_values_without_a_legend_per_trial(tmp_path: Path) -> None:
    import warnings

    from sounding.tuning import LEGEND_TRIALS, _plots

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        for epoch in range(3):
            trial.report(0.5 + dropout * epoch / 10, epoch)
        return 0.5 + dropout / 5

    study.optimize(objective, n_trials=3 * LEGEND_TRIALS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied": the legend did not fit
        made = _plots(study, tmp_path)
    assert {p.name for p in made} >= {"history.png", "intermediate.png", "parallel.png"}
