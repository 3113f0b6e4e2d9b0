"""Model registry: register each trained model, promote it only on evidence, keep the alias history, roll back.

The gate compares a challenger with the current ``@champion`` on the same frozen test set (the prepared
``test.npz``). It is promoted only if its accuracy is higher by at least ``registry.margin`` *and* the
difference is significant by an exact McNemar test on the paired predictions (p < ``registry.alpha``).
Otherwise it gets ``@challenger``. With no champion yet, it is promoted if it reaches ``registry.floor``.
Aliases only, never the deprecated stages. MLflow keeps no history of aliases, so every move is appended
to the registered model's ``alias_history`` tag (JSON), which ``rollback`` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sounding import tracking
from sounding.config import Params
from sounding.errors import BadInput

HISTORY_TAG = "alias_history"
HISTORY_KEEP = 40  # entries kept in the tag (MLflow caps tag values at a few kB)


def mcnemar_p(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """Exact two-sided McNemar p-value: are the two models' error rates different on these samples?"""
    from scipy.stats import binomtest

    only_challenger = int(np.sum(challenger_correct & ~champion_correct))
    only_champion = int(np.sum(~challenger_correct & champion_correct))
    discordant = only_challenger + only_champion
    return 1.0 if discordant == 0 else float(binomtest(only_challenger, discordant, 0.5).pvalue)


def decide(acc_new: float, acc_champion: float | None, p_value: float | None, params: Params) -> str:
    """``promote`` or ``challenger``, by the rules in the module docstring."""
    reg = params.registry
    if acc_champion is None:
        return "promote" if acc_new >= reg.floor else "challenger"
    better = acc_new - acc_champion >= reg.margin and acc_new > acc_champion
    return "promote" if better and p_value is not None and p_value < reg.alpha else "challenger"


def _predict_classes(model_uri: str, tracking_uri: str, x: np.ndarray) -> np.ndarray:
    from sounding.serving import load_model

    return load_model(model_uri, tracking_uri).predict(x).argmax(1)


def history(client: Any, name: str) -> list[dict]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _record(client: Any, name: str, entry: dict) -> None:
    entries = (history(client, name) + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}])[
        -HISTORY_KEEP:
    ]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries, separators=(",", ":")))


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def register_and_gate(
    params: Params, name: str, model_uri: str, tags: dict[str, str], x: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name``, run the gate, move aliases, record why. A model
    already registered (same source run, same weights) is not registered again: ``decision: unchanged``."""
    import mlflow

    from sounding.serving import load_model

    client = tracking.client(params.tracking.uri)
    tracking.use_store(params.tracking.uri)
    candidate = load_model(model_uri, params.tracking.uri)
    same = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get("weights_sha256") == candidate.weights_sha256
        and v.tags.get("source_run") == tags.get("source_run")
    ]
    if same:
        return {
            "model": name,
            "version": int(same[0].version),
            "decision": "unchanged",
            "accuracy": float((candidate.predict(x).argmax(1) == y).mean()),
            "champion_version": None,
            "champion_accuracy": None,
            "mcnemar_p": None,
        }
    tags = {**tags, "weights_sha256": candidate.weights_sha256}  # checked on every later load
    version = mlflow.register_model(model_uri, name, tags=tags).version  # creates the model the first time
    new_correct = _predict_classes(f"models:/{name}/{version}", params.tracking.uri, x) == y
    champion = _champion(client, name)
    acc_new = float(new_correct.mean())
    acc_champion = p_value = None
    if champion is not None:
        champion_correct = _predict_classes(f"models:/{name}/{champion.version}", params.tracking.uri, x) == y
        acc_champion = float(champion_correct.mean())
        p_value = mcnemar_p(new_correct, champion_correct)
    decision = decide(acc_new, acc_champion, p_value, params)
    alias = "champion" if decision == "promote" else "challenger"
    client.set_registered_model_alias(name, alias, version)
    record = {
        "model": name,
        "version": int(version),
        "decision": decision,
        "accuracy": acc_new,
        "champion_version": None if champion is None else int(champion.version),
        "champion_accuracy": acc_champion,
        "mcnemar_p": p_value,
        "margin": params.registry.margin,
        "alpha": params.registry.alpha,
    }
    for key, value in record.items():
        if value is not None and key != "model":
            client.set_model_version_tag(name, version, f"gate.{key}", str(value))
    _record(
        client,
        name,
        {
            "action": decision,
            "alias": alias,
            "version": int(version),
            "previous_champion": record["champion_version"],
        },
    )
    return record


def register_all(
    params: Params, results_dir: str | Path, data_dir: str | Path, out: str | Path
) -> dict[str, Any]:
    """Stage ``register``: gate every trained architecture, then the best of them as ``PREFIX-best``."""
    from sounding.data.prepare import load_prepared
    from sounding.files import load_results, write_json

    data = load_prepared(data_dir)
    decisions = []
    candidates = []
    for arch, metrics in zip(params.train.archs, load_results(results_dir, params.train.archs), strict=True):
        tags = {
            "arch": arch,
            "data_sha256": metrics["data_sha256"],
            "git_sha": tracking.git_sha(),
            "params_hash": metrics["params_hash"],
            "source_run": metrics["seeds"][0]["run_id"],
            "test_acc": str(metrics["seeds"][0]["test/acc"]),
            "test_f1_macro": str(metrics["seeds"][0]["test/f1_macro"]),
        }
        decision = register_and_gate(
            params, f"{params.registry.prefix}-{arch}", metrics["model_uri"], tags, data.test.x, data.test.y
        )
        decisions.append(decision)
        candidates.append((decision["accuracy"], arch, metrics["model_uri"], tags))
    _, best_arch, best_uri, best_tags = max(candidates, key=lambda c: c[0])
    decisions.append(
        register_and_gate(
            params, f"{params.registry.prefix}-best", best_uri, best_tags, data.test.x, data.test.y
        )
    )
    report = {"decisions": decisions, "best_arch": best_arch}
    write_json(out, report)
    return report


def rollback(params: Params, name: str) -> dict[str, Any]:
    """Move ``@champion`` back to the champion before the current one, and record it."""
    client = tracking.client(params.tracking.uri)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        raise BadInput(f"no registered model {name!r}; run `sounding register` first")
    current = _champion(client, name)
    if current is None:
        raise BadInput(f"{name} has no @champion to roll back")
    # Replay the history as a stack: a promotion pushes a champion, a rollback pops one.
    stack: list[int] = []
    for entry in history(client, name):
        if entry["action"] == "promote":
            stack.append(entry["version"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    previous = stack[-2] if len(stack) >= 2 and stack[-1] == int(current.version) else None
    if previous is None:
        raise BadInput(
            f"{name}: version {current.version} is the only champion there has been; nothing to roll back to"
        )
    client.set_registered_model_alias(name, "champion", str(previous))
    _record(
        client,
        name,
        {
            "action": "rollback",
            "alias": "champion",
            "version": previous,
            "previous_champion": int(current.version),
        },
    )
    return {"model": name, "champion": previous, "replaced": int(current.version)}
