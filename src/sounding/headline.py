"""The headline numbers of each stage: what its DVC ``metrics:`` file holds, so that ``dvc metrics show``,
``dvc exp show`` and ``dvc metrics diff`` compare a handful of numbers per stage.

Numbers only, under names shared across files so that the table's columns line up (every architecture's
``test_acc`` in one column). The stage's full record (per-seed values, run ids, hashes, URIs, per-budget
tables) is its ``results/`` JSON, which the report and the registry read.
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
    """An architecture's test accuracy and macro-F1 (mean over seeds) and the accuracy's spread. No timing:
    the same params give the same numbers, so a diff shows only what changed (times are in the results)."""
    keys = ("test_acc", "test_acc_std", "test_f1_macro")
    return _numbers({k: record[k] for k in keys})


def baselines(record: dict) -> dict[str, dict[str, float]]:
    """Each classical baseline's test accuracy: ``logreg.test_acc``, ``1nn.test_acc``."""
    return _numbers({name: {"test_acc": r["test_acc"]} for name, r in record["baselines"].items()})


def gan(record: dict) -> dict[str, float]:
    """The judge's accuracy on generated samples and their Fréchet distance to real ones; nothing when the
    study was skipped on this data."""
    return {} if "skipped" in record else _numbers({k: record[k] for k in ("judge_acc", "frechet")})


def depth(record: dict) -> dict[str, float]:
    """How many configurations diverged, and the best test accuracy of the others."""
    trained = [c["test_acc"] for c in record["configs"] if not c["diverged"]]
    return _numbers({"n_diverged": record["n_diverged"], "best_test_acc": max(trained, default=None)})


def transfer(record: dict) -> dict[str, dict[str, float]]:
    """Fine-tuning's gain over training from scratch at the smallest label budget, by architecture:
    ``finetune_gain.mlp``; nothing for a study skipped on this data."""
    if not record["results"]:
        return {}
    smallest = f"{record['budgets'][0]:g}"
    gains = {arch: r["finetune"][smallest]["gain"] for arch, r in record["results"].items()}
    return _numbers({"finetune_gain": gains})
