"""Registry: the promotion gate, the decision record, rollback, batch inference and tampering."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from sounding import stages, tracking
from sounding.config import Params
from sounding.errors import BadInput
from sounding.registry import decide, history, mcnemar_p, register_all, rollback
from tests.conftest import run_cli, write_params


def test_mcnemar_is_exact_and_two_sided() -> None:
    a = np.array([True] * 20 + [False] * 80)
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p(a, ~a) == pytest.approx(
        2 * sum(__import__("math").comb(100, k) for k in range(21)) / 2**100
    )
    b = a.copy()
    b[:2] = False  # two discordant pairs: nowhere near significant
    assert mcnemar_p(a, b) == pytest.approx(0.5)


def test_gate_needs_margin_and_significance(params: Params) -> None:
    assert decide(0.5, None, None, params) == "promote"
    assert decide(0.1, None, None, params) == "challenger"  # below the floor
    assert decide(0.90, 0.80, 0.001, params) == "promote"
    assert decide(0.90, 0.80, 0.2, params) == "challenger"  # not significant
    assert decide(0.802, 0.80, 0.001, params) == "challenger"  # below the margin
    assert decide(0.70, 0.80, 0.001, params) == "challenger"  # significantly worse


def _train_and_register(params: Params, prepared: Path, tmp: Path, **overrides: object) -> dict:
    p = params.with_overrides({"train.archs": ["mlp"], **overrides})
    stages.train_architecture(
        p, "mlp", prepared, tmp / "models/mlp", tmp / "metrics/mlp.json", tmp / "plots/mlp", progress=False
    )
    return register_all(p, tmp / "metrics", prepared, tmp / "reports/promotion.json")


def _champion(params: Params, name: str) -> int:
    return int(tracking.client(params.tracking.uri).get_model_version_by_alias(name, "champion").version)


def test_champion_challenger_promotion_and_rollback(params: Params, prepared: Path, tmp_path: Path) -> None:
    first = _train_and_register(params, prepared, tmp_path, **{"train.epochs": 3})
    mlp = first["decisions"][0]
    assert (mlp["model"], mlp["version"], mlp["decision"]) == ("sounding-mlp", 1, "promote")
    assert first["decisions"][1]["model"] == "sounding-best" and first["best_arch"] == "mlp"

    worse = _train_and_register(
        params, prepared, tmp_path, **{"train.epochs": 3, "models.mlp.dropout": 0.9, "train.lr": 1e-4}
    )["decisions"][0]
    assert worse["decision"] == "challenger" and worse["champion_version"] == 1
    assert _champion(params, "sounding-mlp") == 1
    client = tracking.client(params.tracking.uri)
    version = client.get_model_version("sounding-mlp", "2")
    assert version.tags["gate.decision"] == "challenger" and version.tags["gate.champion_version"] == "1"
    assert {"data_sha256", "git_sha", "params_hash", "source_run", "test_acc"} <= set(version.tags)
    assert int(client.get_model_version_by_alias("sounding-mlp", "challenger").version) == 2

    better = _train_and_register(params, prepared, tmp_path, **{"train.epochs": 40})["decisions"][0]
    assert better["decision"] == "promote", better
    assert better["accuracy"] > better["champion_accuracy"] and better["mcnemar_p"] < 0.05
    assert _champion(params, "sounding-mlp") == 3
    record = json.loads((tmp_path / "reports/promotion.json").read_text())
    assert record["decisions"][0]["version"] == 3

    assert rollback(params, "sounding-mlp") == {"model": "sounding-mlp", "champion": 1, "replaced": 3}
    assert _champion(params, "sounding-mlp") == 1
    assert [e["action"] for e in history(client, "sounding-mlp")] == [
        "promote",
        "challenger",
        "promote",
        "rollback",
    ]
    with pytest.raises(BadInput, match="only champion there has been"):
        rollback(params, "sounding-mlp")


def test_predict_writes_probabilities_and_refuses_bad_shapes(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    _train_and_register(params, prepared, tmp_path)
    write_params(tmp_path / "params.yaml", params)
    x = np.load(prepared / "test.npz")["x"][:7]
    np.savez(tmp_path / "good.npz", x=x)
    ok = run_cli(
        "predict",
        "--model",
        "models:/sounding-mlp@champion",
        "--input",
        "good.npz",
        "--output",
        "pred.csv",
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[0].startswith("row,predicted,p_0") and len(rows) == 8
    assert abs(sum(float(v) for v in rows[1].split(",")[2:]) - 1) < 1e-4

    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 39), dtype=np.float32))
    bad = run_cli(
        "predict",
        "--model",
        "models:/sounding-mlp@champion",
        "--input",
        "bad.npz",
        "--output",
        "pred.csv",
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "x has shape [3, 39]; the model expects [N, 40]" in bad.stderr
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 8  # the earlier output is untouched
    np.savez(tmp_path / "nan.npz", x=np.full((2, 40), np.nan, dtype=np.float32))
    nan = run_cli(
        "predict",
        "--model",
        "models:/sounding-mlp@champion",
        "--input",
        "nan.npz",
        "--output",
        "n.csv",
        cwd=tmp_path,
    )
    assert nan.returncode == 2 and "NaN or infinite" in nan.stderr


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tampered_weights_artifact_never_runs(params: Params, prepared: Path, tmp_path: Path) -> None:
    _train_and_register(params, prepared, tmp_path)
    client = tracking.client(params.tracking.uri)
    source = client.get_model_version("sounding-mlp", "1").source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    (weights,) = Path(location.removeprefix("file://")).rglob("model.safetensors")
    marker = tmp_path / "pwned"
    _Marker.path = str(marker)
    weights.write_bytes(pickle.dumps(_Marker()))
    from sounding.serving import predict_file

    np.savez(tmp_path / "good.npz", x=np.zeros((2, 40), dtype=np.float32))
    with pytest.raises(BadInput, match="not a readable safetensors file"):
        predict_file("models:/sounding-mlp/1", params.tracking.uri, tmp_path / "good.npz", tmp_path / "p.csv")
    assert not marker.exists() and not (tmp_path / "p.csv").exists()
