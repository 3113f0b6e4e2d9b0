"""The headline numbers of each stage: what its DVC ``metrics:`` file holds, so that ``dvc metrics show``,
``dvc exp show`` and ``dvc metrics diff`` compare a handful of numbers per stage.

Numbers only, under names shared across files so that the table's columns line up and stay few: every
network's and baseline's ``test_acc`` in one column, so ``dvc metrics show`` fits a 120-column terminal. A
stage that scores several models (``baselines``, ``transfer``) writes one file per model in a folder (its
``metrics:`` output), so a model is a row, not a column. The stage's full record (per-seed values, run ids,
hashes, URIs, per-budget tables) is its ``results/`` JSON, which the report and the registry read.
"""

from __future__ import annotations

from typing import Any

DIGITS = 6
"""Decimals kept: the float32 accuracies' noise past them would show as a change in ``dvc metrics diff``."""


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _numbers(v) if isinstance(v, dict) else round(float(v), DIGITS)
        for k, v in values.items()
        if v is not None
    }


def train(record: dict) -> dict[str, float]:
    """An architecture's test accuracy and macro-F1 (mean over seeds) and the accuracy's spread. No timing,
    which differs on every run: a diff shows what changed (times are in the results).
    What tuning gained over the params' own values is in the results (``untuned``) and the leaderboard: one
    more column here would take ``dvc metrics show`` past 120 characters."""
    keys = ("test_acc", "test_acc_std", "test_f1_macro")
    return _numbers({k: record[k] for k in keys})


def baselines(record: dict) -> dict[str, dict[str, float]]:
    """Each classical baseline's test accuracy and macro-F1, by baseline (``logreg``, ``1nn``): one file each."""
    keys = ("test_acc", "test_f1_macro")
    return {name: _numbers({k: r[k] for k in keys}) for name, r in record["baselines"].items()}


def gan(record: dict) -> dict[str, float]:
    """The judge's accuracy on generated samples and their Fréchet distance to real ones; nothing when the
    study was skipped on this data."""
    return {} if "skipped" in record else _numbers({k: record[k] for k in ("judge_acc", "frechet")})


def depth(record: dict) -> dict[str, float]:
    """The test accuracy of the study's best configuration (of those that did not diverge; how many did is in
    the results and the plot)."""
    trained = [c["test_acc"] for c in record["configs"] if not c["diverged"]]
    return _numbers({"test_acc": max(trained, default=None)})


def transfer(record: dict) -> dict[str, dict[str, float]]:
    """Fine-tuning's gain over training from scratch at the smallest label budget, by architecture (one file
    each); none for an architecture skipped on this data, nothing when every one was (the record then has
    no budgets)."""
    if not record["results"]:
        return {}
    smallest = f"{record['budgets'][0]:g}"
    return {
        arch: _numbers({"finetune_gain": r["finetune"][smallest]["gain"]})
        for arch, r in record["results"].items()
    }
