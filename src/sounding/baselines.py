"""Classical baselines: do the networks earn their keep? Two scikit-learn models on the same prepared split.

- ``logreg``: logistic regression (multinomial, L2, ``C=1``) on the flattened series, each feature
  standardised by a ``StandardScaler`` fitted on the fitting part (a ``Pipeline``, so the test part never
  shapes the scaling);
- ``1nn``: 1-nearest-neighbour with the Euclidean distance on the raw flattened values (the classic
  time-series baseline: 1-NN-ED).

Both are fit on train + val together. The networks fit on train and use val to select their weights (and
tuning uses it to choose regularisation); these models have nothing to select, so holding val out would
only hand them fewer samples. Both are then scored on the same test part as the networks.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sounding import tracking
from sounding.config import Params
from sounding.data.prepare import Prepared, load_prepared
from sounding.files import write_json

STAGE = "baselines"
LOGREG_MAX_ITER = 10_000
"""L-BFGS iterations allowed; on standardised MNIST-1D it converges in under a hundred. ``converged`` in the
figures says whether it did."""

LABELS = {"logreg": "logistic regression (sklearn)", "1nn": "1-NN (Euclidean)"}
"""How the leaderboard names each baseline."""


def build(name: str, seed: int) -> Pipeline | KNeighborsClassifier:
    """The unfitted estimator of baseline ``name`` (``logreg`` or ``1nn``)."""
    if name == "logreg":
        return make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed)
        )
    if name == "1nn":
        return KNeighborsClassifier(n_neighbors=1, metric="euclidean")
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(LABELS)}")


def _stored_values(name: str, model: Any) -> int:
    """Numbers the fitted model keeps to predict: logistic regression's weights and biases (the scaler's
    means and scales aside), 1-NN's whole fitting set."""
    if name == "logreg":
        clf = model[-1]
        return int(clf.coef_.size + clf.intercept_.size)
    return int(model.n_samples_fit_ * model.n_features_in_)


def evaluate(
    data: Prepared, seed: int, threads: int = 1, names: tuple[str, ...] = tuple(LABELS)
) -> dict[str, dict[str, Any]]:
    """Fit each baseline on train + val (flattened), score it on test; no file or tracking is touched.

    ``threads`` caps the BLAS and OpenMP threads (``compute.threads``, as for torch): these problems are
    small, and on a busy 2-core machine two spinning BLAS threads made the logistic fit 30 times slower.

    Per baseline: ``arch`` (``baseline/NAME``, the MLflow tag), ``label``, ``test_acc``, ``test_f1_macro``
    (over every class of the data, 0 for a class never predicted correctly), ``train_time_s`` (the fit, in
    seconds), ``predict_time_s`` (the whole test part), ``n_params`` (stored values, ``_stored_values``),
    ``estimator`` (its scikit-learn parameters) and, for ``logreg``, ``n_iter`` and ``converged``.
    """
    x_fit = np.concatenate([_flat(data.train.x), _flat(data.val.x)])
    y_fit = np.concatenate([data.train.y, data.val.y])
    x_test, y_test = _flat(data.test.x), data.test.y
    classes = np.arange(data.spec.num_classes)
    results = {}
    for name in names:
        model = build(name, seed)
        with threadpool_limits(limits=threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported as ``converged`` instead
            start = time.perf_counter()
            model.fit(x_fit, y_fit)
            fitted = time.perf_counter()
            predicted = model.predict(x_test)
            done = time.perf_counter()
        row = {
            "arch": f"baseline/{name}",
            "label": LABELS[name],
            "test_acc": float(accuracy_score(y_test, predicted)),
            "test_f1_macro": float(
                f1_score(y_test, predicted, labels=classes, average="macro", zero_division=0)
            ),
            "train_time_s": fitted - start,
            "predict_time_s": done - fitted,
            "n_params": _stored_values(name, model),
            "estimator": _estimator_params(model),
        }
        if name == "logreg":
            row["n_iter"] = int(model[-1].n_iter_.max())
            row["converged"] = row["n_iter"] < LOGREG_MAX_ITER
        results[name] = row
    return results


def _flat(x: np.ndarray) -> np.ndarray:
    """[N, ...] → [N, features]: channels and positions side by side, as a vector model sees them."""
    return x.reshape(len(x), -1)


def _estimator_params(model: Any) -> dict[str, Any]:
    """The final estimator's constructor arguments that shape the result (JSON-ready)."""
    estimator = model[-1] if isinstance(model, Pipeline) else model
    keep = ("C", "l1_ratio", "max_iter", "solver", "tol", "random_state", "n_neighbors", "metric", "weights")
    return {k: v for k, v in estimator.get_params().items() if k in keep}


def run_baselines(params: Params, data_dir: str | Path, results_path: str | Path) -> dict[str, Any]:
    """Stage ``baselines``: ``evaluate`` on the verified prepared data, one MLflow run per baseline in the
    tracking experiment (beside the networks' runs, tagged like them), then ``results_path``."""
    data = load_prepared(data_dir)
    results = evaluate(data, params.seed, params.compute.threads)
    n_fit = len(data.train.y) + len(data.val.y)
    for name, row in results.items():
        tags = {"stage": STAGE, "arch": row["arch"], "seed": str(params.seed), "data_sha256": data.sha256}
        logged = {"seed": params.seed, "baseline": name, "fit_on": "train+val", "n_fit": n_fit}
        logged.update({f"model.{k}": v for k, v in row["estimator"].items()})
        with tracking.tracked_run(params, f"baseline-{name}", tags, logged_params=logged) as run_id:
            figures = {"test/acc": row["test_acc"], "test/f1_macro": row["test_f1_macro"]}
            figures.update({k: row[k] for k in ("train_time_s", "predict_time_s", "n_params")})
            tracking.log_metrics(params.tracking.uri, run_id, figures, step=0)
        row["run_id"] = run_id
    summary = {
        "fit_on": "train+val",
        "n_fit": n_fit,
        "n_test": len(data.test.y),
        "seed": params.seed,
        "data_sha256": data.sha256,
        "baselines": results,
    }
    write_json(results_path, summary)
    return summary
