"""Registry: the promotion gate, the decision record, rollback, batch inference and tampering."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sounding import stages, tracking
from sounding.config import Params
from sounding.errors import BadInput
from sounding.registry import decide, history, mcnemar_p, register_all, rollback
from sounding.serving import predict_file
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
    p = params.with_overrides({"train.archs": ["mlp"], "gan.judge": "mlp", **overrides})
    stages.train_architecture(
        p, "mlp", prepared, tmp / "models/mlp", tmp / "results/mlp.json", tmp / "plots/mlp", progress=False
    )
    return register_all(p, tmp / "results", prepared, tmp / "reports/promotion.json")


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
    # The command's own call, in this process (the command's exit 2 is shown above; a start-up is 5 s)
    with pytest.raises(BadInput, match="NaN or infinite"):
        predict_file(
            "models:/sounding-mlp@champion", params.tracking.uri, tmp_path / "nan.npz", tmp_path / "n.csv"
        )
    assert not (tmp_path / "n.csv").exists()


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickled_pyfunc(folder: Path, marker: Path) -> None:
    """Turn a logged model into MLflow's cloudpickle form, its pickle holding a payload."""
    import yaml

    _Marker.path = str(marker)
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Marker()))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    del pyfunc["model_code_path"]
    pyfunc.update(loader_module="mlflow.pyfunc.model", python_model="python_model.pkl")
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


TAMPERINGS = {
    "weights replaced by a pickle": lambda folder, marker: (
        setattr(_Marker, "path", str(marker)),
        (folder / "artifacts" / "model.safetensors").write_bytes(pickle.dumps(_Marker())),
    ),
    "model turned into a cloudpickle pyfunc": _pickled_pyfunc,
    "stored model code replaced": lambda folder, marker: (folder / "pyfunc_entry.py").write_text(
        f"open({str(marker)!r}, 'w')\n" + (folder / "pyfunc_entry.py").read_text()
    ),
}


CONTROL = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
for uri in sys.argv[2:]:
    try:
        mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        print(uri, type(exc).__name__)
"""
"""MLflow's own loader over the tampered models, as a control: it does run the payloads."""


def test_a_tampered_registry_artifact_never_runs(
    params: Params, prepared: Path, tmp_path: Path, figures: Counter[str]
) -> None:
    """Someone with write access to the store changes a registered model's files. ``predict`` (and the gate,
    and transfer, through the same loader) never runs what was put there: pickles are refused, stored code
    is never executed."""
    import mlflow

    from sounding.serving import log_pyfunc

    _train_and_register(params, prepared, tmp_path)
    client = tracking.client(params.tracking.uri)
    np.savez(tmp_path / "good.npz", x=np.zeros((2, 40), dtype=np.float32))
    markers, uris = {}, {}
    for n, (tampering, tamper) in enumerate(TAMPERINGS.items()):
        # Its own run each: a run that holds these weights keeps the model it has (log_pyfunc).
        with tracking.tracked_run(params, f"tampered-{n}", {}) as run_id:
            logged = log_pyfunc(
                run_id, params.tracking.uri, tmp_path / "models/mlp", np.zeros((2, 40), "float32")
            )
        uris[tampering] = f"models:/tampered/{mlflow.register_model(logged, 'tampered').version}"
        folder = client.get_logged_model(logged.removeprefix("models:/")).artifact_location
        markers[tampering] = tmp_path / f"pwned-{n}"
        tamper(Path(folder.removeprefix("file://")), markers[tampering])
        figures["faults injected"] += 1

    write_params(tmp_path / "params.yaml", params)
    pickled = uris["model turned into a cloudpickle pyfunc"]
    result = run_cli("predict", "--model", pickled, "--input", "good.npz", "--output", "p.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not a Sounding model" in result.stderr and "never runs code or unpickles" in result.stderr
    with pytest.raises(BadInput, match="not a readable safetensors file"):
        predict_file(
            uris["weights replaced by a pickle"],
            params.tracking.uri,
            tmp_path / "good.npz",
            tmp_path / "p.csv",
        )
    assert not (tmp_path / "p.csv").exists()
    # The stored code is ignored: the model is rebuilt from its weights by the installed package and serves.
    predict_file(
        uris["stored model code replaced"], params.tracking.uri, tmp_path / "good.npz", tmp_path / "p.csv"
    )
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
    assert not any(m.exists() for m in markers.values())

    control = subprocess.run(
        [sys.executable, "-c", CONTROL, tracking.resolve_uri(params.tracking.uri), *uris.values()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # MLflow's loader runs the pickle and the stored code (so the checks above could fail); it reads the
    # weights with Sounding's safetensors loader, which refuses the third.
    assert markers["model turned into a cloudpickle pyfunc"].exists(), control.stdout + control.stderr[-2000:]
    assert markers["stored model code replaced"].exists(), control.stdout + control.stderr[-2000:]
    assert not markers["weights replaced by a pickle"].exists()


def test_the_pyfunc_model_class_defines_without_mlflow_warnings() -> None:
    code = "import warnings; warnings.simplefilter('always'); import sounding.models.pyfunc_entry"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr


def _spoil(weights: Path, how: str) -> None:
    """NaN bytes over some tensor data of a safetensors file (its header left intact), or the file cut short."""
    data = bytearray(weights.read_bytes())
    if how == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
        return
    start = 8 + int.from_bytes(data[:8], "little")  # after the JSON header: the tensors, 8-byte aligned
    data[start + 64 : start + 96] = b"\xff" * 32  # eight float32 NaNs
    weights.write_bytes(bytes(data))


def test_predict_refuses_spoilt_weights_naming_the_model(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    _train_and_register(params, prepared, tmp_path)
    write_params(tmp_path / "params.yaml", params)
    np.savez(tmp_path / "x.npz", x=np.load(prepared / "test.npz")["x"][:50])
    stored = sorted((tmp_path / "mlruns").rglob("model.safetensors"))  # the store's copies
    assert stored, sorted(str(p) for p in tmp_path.rglob("*.safetensors"))
    logged = json.loads((tmp_path / "results" / "mlp.json").read_text())["model_uri"]
    for how, message in (("nan", "weights are NaN or infinite"), ("truncate", "not a readable")):
        for weights in stored:
            _spoil(weights, how)
        # A registered version: its weights are not those whose digest was recorded at registration. A
        # logged model (no registration): the loader finds the damage itself.
        for uri, expected in (
            ("models:/sounding-mlp@champion", "are not those registered"),
            (logged, message),
        ):
            if how == "nan" and uri == logged:  # once through the command: exit 2 and the message on stderr
                result = run_cli(
                    "predict", "--model", uri, "--input", "x.npz", "--output", "p.csv", cwd=tmp_path
                )
                assert result.returncode == 2, result.stdout + result.stderr
                error = result.stderr.removeprefix("error: ")
            else:  # the command's own call, in this process (a start-up is 5 s)
                with pytest.raises(BadInput) as raised:
                    predict_file(uri, params.tracking.uri, tmp_path / "x.npz", tmp_path / "p.csv")
                error = str(raised.value)
            assert error.startswith(f"{uri}: ") and expected in error, error
            assert "/tmp" not in error.replace(str(tmp_path), "")  # no deleted temporary copy named
            assert not (tmp_path / "p.csv").exists()


def test_registering_an_unchanged_model_again_adds_no_version(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    first = _train_and_register(params, prepared, tmp_path)
    again = register_all(
        params.with_overrides({"train.archs": ["mlp"], "gan.judge": "mlp"}),
        tmp_path / "results",
        prepared,
        tmp_path / "again.json",
    )
    assert [d["decision"] for d in first["decisions"]] == ["promote", "promote"]
    assert [(d["decision"], d["version"]) for d in again["decisions"]] == [("unchanged", 1), ("unchanged", 1)]
    client = tracking.client(params.tracking.uri)
    assert [int(v.version) for v in client.search_model_versions("name = 'sounding-mlp'")] == [1]
    assert len(client.get_model_version("sounding-mlp", "1").tags["weights_sha256"]) == 64
