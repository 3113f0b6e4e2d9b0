"""Classical baselines: their scores on data whose answer is known, the stage's files and MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sounding import tracking
from sounding.baselines import evaluate
from sounding.data.prepare import DataSpec, Prepared, Split
from tests.conftest import run_cli, write_params


def clusters(n: int, seed: int, classes: tuple[int, ...] = (0, 1, 2)) -> Split:
    """``n`` samples of shape [2, 5] per class; class k sits around 10·k in every feature (noise σ 0.5)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(classes), n)
    x = 10.0 * y[:, None, None] + rng.normal(scale=0.5, size=(len(y), 2, 5))
    return Split(x.astype(np.float32), y.astype(np.int64))


def synthetic(train: Split | None = None, val: Split | None = None) -> Prepared:
    return Prepared(
        train=train or clusters(20, 0),
        val=val or clusters(4, 1),
        test=clusters(10, 2),
        spec=DataSpec(input_shape=(2, 5), layout="sequence", num_classes=3),
        sha256="0" * 64,
    )


def test_well_separated_clusters_are_classified_perfectly_by_1nn_and_well_by_logreg() -> None:
    results = evaluate(synthetic(), seed=0)
    assert set(results) == {"logreg", "1nn"}
    nn, logreg = results["1nn"], results["logreg"]
    assert nn["test_acc"] == 1.0 and nn["test_f1_macro"] == 1.0
    assert logreg["test_acc"] >= 0.9 and logreg["converged"]  # chance is 1/3
    assert logreg["n_params"] == 3 * 10 + 3  # a weight per class and flattened feature, a bias per class
    assert nn["n_params"] == (60 + 12) * 10  # 1-NN stores every train + val sample
    assert nn["arch"] == "baseline/1nn" and nn["estimator"] == {
        "metric": "euclidean",
        "n_neighbors": 1,
        "weights": "uniform",
    }
    assert logreg["estimator"]["random_state"] == 0 and logreg["train_time_s"] > 0


def test_both_fit_on_train_and_val_together() -> None:
    """Class 2 appears in val alone: a model fitted on train only would never predict it (2/3 at most)."""
    results = evaluate(synthetic(train=clusters(20, 0, (0, 1)), val=clusters(4, 1, (2,))), seed=0)
    assert results["1nn"]["test_acc"] == 1.0
    assert results["logreg"]["test_acc"] >= 0.9


def test_cli_writes_metrics_and_one_tracked_run_per_baseline(tmp_path: Path, params, prepared: Path) -> None:
    write_params(tmp_path / "params.yaml", params)
    result = run_cli(
        "baselines",
        "--data",
        str(prepared),
        "--metrics",
        "out/headline",
        "--results",
        "out/baselines.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1-NN (Euclidean): test accuracy" in result.stdout
    assert "logistic regression (sklearn): test accuracy" in result.stdout
    summary = json.loads((tmp_path / "out" / "baselines.json").read_text())
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert summary["data_sha256"] == manifest["sha256"] and summary["fit_on"] == "train+val"
    train, val = (
        manifest["files"]["train.npz"]["shape"]["y"][0],
        manifest["files"]["val.npz"]["shape"]["y"][0],
    )
    assert summary["n_fit"] == train + val
    by_arch = {b["arch"]: b for b in summary["baselines"].values()}
    assert set(by_arch) == {"baseline/logreg", "baseline/1nn"}
    assert all(0.1 < b["test_acc"] <= 1 for b in by_arch.values())  # 10 classes: chance is 0.1
    for name, b in summary["baselines"].items():  # DVC's metrics: numbers only, one file a baseline
        headline = json.loads((tmp_path / "out" / "headline" / f"{name}.json").read_text())
        assert headline == {k: round(b[k], 6) for k in ("test_acc", "test_f1_macro")}

    c = tracking.client(params.tracking.uri)
    runs = c.search_runs([c.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert {r.info.run_name for r in runs} == {"baseline-logreg", "baseline-1nn"}
    for run in runs:
        tags, arch = run.data.tags, run.data.tags["arch"]
        assert run.info.status == "FINISHED" and run.info.run_id == by_arch[arch]["run_id"]
        assert tags["stage"] == "baselines" and tags["seed"] == str(params.seed)
        assert tags["data_sha256"] == manifest["sha256"] and tags["git_sha"]
        assert tags["mlflow.source.name"].startswith("sounding baselines") and tags["mlflow.user"]
        assert run.data.metrics["test/acc"] == by_arch[arch]["test_acc"]
        assert run.data.metrics["test/f1_macro"] == by_arch[arch]["test_f1_macro"]
        assert run.data.params["fit_on"] == "train+val" and run.data.params["n_fit"] == str(train + val)
    params_of = {r.data.tags["arch"]: r.data.params for r in runs}
    assert params_of["baseline/1nn"]["model.n_neighbors"] == "1"
    assert params_of["baseline/logreg"]["model.random_state"] == str(params.seed)


@pytest.mark.fresh_store
def test_cli_without_prepared_data_exits_2_and_writes_nothing(tmp_path: Path, params) -> None:
    write_params(tmp_path / "params.yaml", params)
    result = run_cli("baselines", cwd=tmp_path)
    assert result.returncode == 2 and "run `sounding prepare` first" in result.stderr
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "mlflow.db").exists()


def test_baselines_whose_outputs_cannot_be_written_leave_the_old_ones_and_their_runs_failed(
    tmp_path: Path, params, prepared: Path, monkeypatch, capsys
) -> None:
    """A full disk while the stage writes: exit 74, the last outputs as they were, and the new runs FAILED
    with the reason (``sounding.unpublished``), not FINISHED as if what they made were published."""
    import errno
    import sys

    import pytest

    from sounding import cli

    write_params(tmp_path / "params.yaml", params)
    results = tmp_path / "results" / "baselines.json"
    results.parent.mkdir()
    results.write_text("{}")

    def disk_full(folder: Path, files: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(cli, "write_json_folder", disk_full)
    monkeypatch.setattr(sys, "argv", ["sounding", "baselines", "--data", str(prepared)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == cli.EXIT_NO_SPACE, capsys.readouterr().err
    assert results.read_text() == "{}" and not (tmp_path / "metrics").exists()
    c = tracking.client(params.tracking.uri)
    runs = c.search_runs([c.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)
    assert all("No space left" in r.data.tags[tracking.UNPUBLISHED_TAG] for r in runs)
