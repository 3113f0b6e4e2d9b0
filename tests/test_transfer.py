"""Transfer: label budgets, loading a pretrained backbone from every source kind (and refusing unsafe or
incompatible ones), the per-group learning rates, and the stage's outputs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sounding.config import Params
from sounding.data.module import EpochPermutation
from sounding.data.prepare import DataSpec, load_prepared
from sounding.errors import BadInput
from sounding.models.classifier import LitClassifier
from sounding.models.factory import build_net, save_net
from sounding.transfer import (
    ROWS,
    STRATEGIES,
    _results,
    budget_indices,
    gain_profile,
    load_backbone,
    run_transfer,
)
from tests.conftest import run_cli, tiny_params, write_params

SPEC = DataSpec(input_shape=(40,), layout="sequence", num_classes=10)


def _saved(
    folder: Path, arch: str = "cnn", input_shape: tuple[int, ...] = (40,), **net: object
) -> torch.nn.Module:
    """A network of ``arch`` saved as Sounding ships one: model.safetensors + config.json."""
    torch.manual_seed(0)
    model = build_net(arch, input_shape, 10, "sequence", **net)
    config = {
        "arch": arch,
        "input_shape": list(input_shape),
        "num_classes": 10,
        "layout": "sequence",
        "net": net,
    }
    save_net(model, config, folder)
    return model


def _backbone_equal(loaded: dict, model: torch.nn.Module) -> bool:
    expected = model.backbone.state_dict()
    return loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def _with_source(source: str, **overrides: object) -> Params:
    return tiny_params(**{"transfer.source": source, **overrides})


# --- Budgets --------------------------------------------------------------------------------------------


def test_budgets_are_stratified_deterministic_and_nested() -> None:
    y = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 20])
    small = budget_indices(y, 0.05, seed=7)
    assert np.array_equal(small, budget_indices(y, 0.05, seed=7))
    assert not np.array_equal(small, budget_indices(y, 0.05, seed=8))
    assert np.bincount(y[small]).tolist() == [5] * 5 + [2] * 4 + [1]  # round(0.05 × n_c) per class
    assert set(small) <= set(budget_indices(y, 0.2, seed=7))
    assert np.bincount(y[budget_indices(y, 0.001, seed=7)]).tolist() == [1] * 10  # never an empty class
    assert len(budget_indices(y, 1.0, seed=7)) == len(y)


def test_epochs_have_the_same_steps_at_every_budget() -> None:
    sampler = EpochPermutation(7, seed=1, length=30)
    order = sampler.indices()
    assert len(order) == 30 and set(order.tolist()) == set(range(7))
    assert torch.equal(order, EpochPermutation(7, seed=1, length=30).indices())
    sampler.set_epoch(1)
    assert not torch.equal(order, sampler.indices())


# --- Loading, from each source kind ---------------------------------------------------------------------


def test_loads_the_pretrain_stage_model(tmp_path: Path) -> None:
    model = _saved(tmp_path / "models" / "pretrained" / "cnn", channels=8)
    backbone = load_backbone(_with_source("pretrain"), "cnn", SPEC, tmp_path / "models" / "pretrained")
    assert _backbone_equal(backbone.state, model)
    assert backbone.net["channels"] == 8  # scratch is built with the pretrained network's settings


def test_the_source_head_is_kept_or_replaced(tmp_path: Path) -> None:
    model = _saved(tmp_path / "cnn")
    kept = load_backbone(_with_source("pretrain", **{"transfer.head": "pretrained"}), "cnn", SPEC, tmp_path)
    assert kept.head is not None and all(
        torch.equal(kept.head[k], v) for k, v in model.head.state_dict().items()
    )
    assert (
        load_backbone(_with_source("pretrain", **{"transfer.head": "new"}), "cnn", SPEC, tmp_path).head
        is None
    )
    five = DataSpec(input_shape=(40,), layout="sequence", num_classes=5)  # a target with other classes
    with pytest.raises(
        BadInput,
        match=r"target's 5 classes.*weight: file has \(10, 125\), model expects \(5, 125\).*transfer\.head=new",
    ):
        load_backbone(_with_source("pretrain", **{"transfer.head": "pretrained"}), "cnn", five, tmp_path)
    assert (
        load_backbone(_with_source("pretrain", **{"transfer.head": "new"}), "cnn", five, tmp_path).head
        is None
    )


def test_loads_safetensors_ckpt_and_pt_files(tmp_path: Path) -> None:
    model = _saved(tmp_path / "st", "mlp", hidden=16)
    params = _with_source(str(tmp_path / "{arch}" / "model.safetensors"))
    with pytest.raises(BadInput, match="not found"):
        load_backbone(params, "mlp", SPEC, tmp_path)
    (tmp_path / "st").rename(tmp_path / "mlp")
    assert _backbone_equal(load_backbone(params, "mlp", SPEC, tmp_path).state, model)

    system = LitClassifier("mlp", (40,), 10, net={"hidden": 16})
    system.net.load_state_dict(model.state_dict())
    torch.save(
        {"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict()}, tmp_path / "m.ckpt"
    )
    assert _backbone_equal(
        load_backbone(_with_source(str(tmp_path / "m.ckpt")), "mlp", SPEC, tmp_path).state, model
    )

    (tmp_path / "pt").mkdir()
    torch.save(model.state_dict(), tmp_path / "pt" / "net.pt")
    with pytest.raises(BadInput, match="config.json"):
        load_backbone(_with_source(str(tmp_path / "pt" / "net.pt")), "mlp", SPEC, tmp_path)
    (tmp_path / "pt" / "config.json").write_text((tmp_path / "mlp" / "config.json").read_text())
    loaded = load_backbone(_with_source(str(tmp_path / "pt" / "net.pt")), "mlp", SPEC, tmp_path)
    assert _backbone_equal(loaded.state, model)


def test_loads_a_registered_model_by_alias_and_a_run_uri(params: Params, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from sounding import tracking
    from sounding.serving import log_pyfunc

    model = _saved(tmp_path / "cnn")
    with tracking.tracked_run(params, "pretrained", {"stage": "test"}) as run_id:
        log_pyfunc(run_id, params.tracking.uri, tmp_path / "cnn", np.zeros((2, 40), dtype=np.float32))
    client = MlflowClient(tracking.resolve_uri(params.tracking.uri))
    client.create_registered_model("sounding-cnn")
    version = client.create_model_version("sounding-cnn", f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias("sounding-cnn", "champion", version)
    for uri in ("models:/sounding-{arch}@champion", f"runs:/{run_id}/model"):
        assert _backbone_equal(load_backbone(_with_source(uri), "cnn", SPEC, tmp_path).state, model)
    with pytest.raises(BadInput, match="cannot read model"):
        load_backbone(_with_source("models:/sounding-{arch}@nobody"), "cnn", SPEC, tmp_path)


def test_a_run_that_holds_the_weights_keeps_its_model_and_new_weights_are_logged(
    params: Params, tmp_path: Path
) -> None:
    """A rerun stage that resumed a finished run logs the same weights again: the run keeps one model."""
    import mlflow

    from sounding import tracking
    from sounding.serving import log_pyfunc

    _saved(tmp_path / "cnn")
    example = np.zeros((2, 40), dtype=np.float32)
    with tracking.tracked_run(params, "pretrained", {"stage": "test"}) as run_id:
        first = log_pyfunc(run_id, params.tracking.uri, tmp_path / "cnn", example)
        again = log_pyfunc(run_id, params.tracking.uri, tmp_path / "cnn", example)
        _saved(tmp_path / "mlp", "mlp")  # other weights
        other = log_pyfunc(run_id, params.tracking.uri, tmp_path / "mlp", example)
    logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    assert again == first and other != first and len(logged) == 2


# --- Refusals -------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, name: str, writer: str, figures: Counter[str]
) -> None:
    marker, control = tmp_path / "pwned", tmp_path / "control"
    # The payload does run when unpickled: proof that the marker would appear if the loader unpickled.
    subprocess.run(
        [sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickle.dumps(_Payload(control)),
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert control.exists()
    path = tmp_path / name
    payload = {"state_dict": {"backbone.input.weight": _Payload(marker)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    _saved(tmp_path / "cfg", "mlp")
    (tmp_path / "config.json").write_text((tmp_path / "cfg" / "config.json").read_text())
    with pytest.raises(BadInput, match=r"refused.*weights_only=True"):
        load_backbone(_with_source(str(path)), "mlp", SPEC, tmp_path)
    assert not marker.exists()
    figures["faults injected"] += 1


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path) -> None:
    _saved(tmp_path / "cnn")
    marker = tmp_path / "pwned"
    (tmp_path / "cnn" / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BadInput, match="pickled files are refused"):
        load_backbone(_with_source("pretrain"), "cnn", SPEC, tmp_path)
    assert not marker.exists()


def test_a_wrong_architecture_checkpoint_names_the_mismatching_tensors(tmp_path: Path) -> None:
    _saved(tmp_path / "cnn", channels=25)  # a CNN offered as the MLP's backbone
    params = _with_source(str(tmp_path / "cnn" / "model.safetensors"))
    with pytest.raises(BadInput) as info:
        load_backbone(params, "mlp", SPEC, tmp_path)
    message = str(info.value)
    assert "a cnn network" in message and "as the mlp backbone" in message
    assert "missing input.weight (100, 40)" in message and "unexpected convs.0.weight (25, 1, 5)" in message


def test_wrong_shapes_name_the_tensors(tmp_path: Path) -> None:
    _saved(tmp_path / "mlp", "mlp", input_shape=(20,))  # pretrained on shorter signals
    with pytest.raises(BadInput, match=r"input\.weight: file has \(100, 20\), model expects \(100, 40\)"):
        load_backbone(_with_source("pretrain"), "mlp", SPEC, tmp_path)
    config = json.loads((tmp_path / "mlp" / "config.json").read_text())
    (tmp_path / "mlp" / "config.json").write_text(json.dumps(dict(config, net={"hidden": 64})))
    with pytest.raises(
        BadInput, match=r"backbone\.input\.weight: file has \(100, 20\), model expects \(64, 20\)"
    ):
        load_backbone(_with_source("pretrain"), "mlp", SPEC, tmp_path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("transfer.source=weights.bin", r"transfer\.source: source must be 'pretrain', an MLflow URI"),
        ("transfer.archs=[linear]", r"transfer\.archs\.0: Input should be 'mlp', 'cnn', 'rnn' or 'fcn'"),
        ("transfer.budgets=[0.1, 1.5]", r"transfer\.budgets\.1: Input should be less than or equal to 1"),
        ("transfer.budgets=[0.1, 0.1]", r"transfer\.budgets: each value may appear once"),
        ("transfer.backbone_lr_scale=0", r"transfer\.backbone_lr_scale: Input should be greater than 0"),
    ],
)
def test_bad_transfer_params_are_named(override: str, expected: str) -> None:
    with pytest.raises(BadInput, match=expected):
        Params().with_overrides([override])


# --- Gains -----------------------------------------------------------------------------------------------


def test_gains_are_paired_differences_and_their_shrinking_is_reported() -> None:
    budgets = [0.01, 0.1, 1.0]
    scratch = {0.01: [0.1, 0.3], 0.1: [0.4, 0.6], 1.0: [0.8, 0.9]}
    acc = {("cnn", "scratch", b): v for b, v in scratch.items()}
    for b, v in scratch.items():
        acc["cnn", "linear_probe", b] = [
            x + d for x, d in zip(v, {0.01: (0.5, 0.3), 0.1: (0.2, 0.2), 1.0: (0.1, 0.0)}[b], strict=True)
        ]
        acc["cnn", "finetune", b] = [
            x + d for x, d in zip(v, {0.01: (0.1, 0.1), 0.1: (0.3, 0.3), 1.0: (0.0, 0.0)}[b], strict=True)
        ]
    labels = {b: int(b * 100) for b in budgets}
    results = _results(acc, {"cnn": None}, budgets, labels, {"cnn": 0.5})
    probe = results["cnn"]["linear_probe"]["0.01"]
    assert probe["gain"] == pytest.approx(0.4) and probe["gain_std"] == pytest.approx(0.1414, abs=1e-4)
    assert probe["gain_over_zero_shot"] == pytest.approx(0.1)  # mean 0.6 against the source's own 0.5
    assert [r["acc"] for r in results["cnn"]["zero_shot"].values()] == [0.5] * 3
    assert (
        "zero_shot" not in _results(acc, {"cnn": None}, budgets, labels, {"cnn": None})["cnn"]
    )  # a new head
    assert "gain" not in results["cnn"]["scratch"]["0.01"]
    gains = gain_profile(results, budgets)
    assert gains["cnn"]["linear_probe"]["by_budget"] == pytest.approx([0.4, 0.2, 0.05])
    assert gains["cnn"]["linear_probe"]["shrinks"] is True
    assert gains["cnn"]["finetune"]["by_budget"] == pytest.approx([0.1, 0.3, 0.0])
    assert gains["cnn"]["finetune"]["shrinks"] is False  # peaks at the middle budget
    assert gain_profile(results, list(reversed(budgets))) == gains  # ordered by budget, not by listing


# --- Training -------------------------------------------------------------------------------------------


def test_linear_probe_freezes_the_backbone_and_finetune_scales_its_lr() -> None:
    probe = LitClassifier("cnn", (40,), 10, lr=0.01, backbone_lr_scale=0.0)
    assert not any(p.requires_grad for p in probe.net.backbone.parameters())
    (group,) = probe.configure_optimizers().param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in probe.net.head.parameters()}
    finetune = LitClassifier("cnn", (40,), 10, lr=0.01, backbone_lr_scale=0.1)
    head, backbone = finetune.configure_optimizers().param_groups
    assert head["lr"] == 0.01 and backbone["lr"] == pytest.approx(0.001)
    assert len(backbone["params"]) == len(list(finetune.net.backbone.parameters()))


def test_stage_writes_metrics_plots_runs_and_is_deterministic(prepared: Path, tmp_path: Path) -> None:
    from sounding import tracking

    params = tiny_params(
        **{
            "transfer.archs": ["mlp"],
            "transfer.budgets": [0.1, 1.0],
            "train.n_seeds": 2,
            "models.mlp.hidden": 16,
        }
    )
    _saved(tmp_path / "models" / "pretrained" / "mlp", "mlp", hidden=16)
    args = (params, prepared, tmp_path / "models" / "pretrained")
    s = run_transfer(*args, tmp_path / "results" / "transfer.json", tmp_path / "plots", progress=False)
    assert json.loads((tmp_path / "results" / "transfer.json").read_text())["results"] == s["results"]
    n_train = len(load_prepared(prepared).train.y)
    assert s["labels"]["1"] == n_train and s["labels"]["0.1"] < n_train
    for strategy in STRATEGIES:
        row = s["results"]["mlp"][strategy]["0.1"]
        assert len(row["per_seed"]) == 2 and 0 <= row["acc"] <= 1
        assert ("gain" in row) == ("gain_over_zero_shot" in row) == (strategy != "scratch")
    # Zero-shot: the pretrained network as it is, the same at every budget; the gains over it are paired
    # with nothing (it has no seed), so they are the plain difference of accuracies.
    zero = s["results"]["mlp"]["zero_shot"]
    assert (
        zero["0.1"]["acc"] == zero["1"]["acc"] and zero["0.1"]["labels"] == 0 and 0 <= zero["1"]["acc"] <= 1
    )
    finetune = s["results"]["mlp"]["finetune"]["0.1"]
    assert finetune["gain_over_zero_shot"] == pytest.approx(finetune["acc"] - zero["0.1"]["acc"])
    for strategy in STRATEGIES[1:]:
        profile = s["gains"]["mlp"][strategy]
        by_budget = [s["results"]["mlp"][strategy][b]["gain"] for b in ("0.1", "1")]
        assert profile["by_budget"] == by_budget and profile["shrinks"] == (by_budget[0] > by_budget[1])
    csv = (tmp_path / "plots" / "mlp.csv").read_text().splitlines()
    assert csv[0] == "labels,budget,zero_shot,scratch,linear_probe,finetune" and len(csv) == 3
    assert (tmp_path / "plots" / "accuracy_vs_budget.png").is_file()

    c = tracking.client(params.tracking.uri)
    runs = c.search_runs([tracking.experiment_id(params.tracking.uri, "sounding-transfer")])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == s["run_id"]]
    assert len(children) == len(ROWS) * 2
    assert [a.path for a in c.list_artifacts(s["run_id"], "plots")][0].endswith("accuracy_vs_budget.png")

    again = run_transfer(*args, tmp_path / "again.json", tmp_path / "again", progress=False)
    assert again["results"] == s["results"]  # same params, same metrics


def test_cli_refuses_a_bad_source_before_any_work(prepared: Path, tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", _with_source(str(tmp_path / "missing.safetensors")))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "transfer.json").write_text("{}")
    result = run_cli("transfer", "--params", "params.yaml", "--data", str(prepared), cwd=tmp_path)
    assert result.returncode == 2 and "missing.safetensors not found" in result.stderr
    result = run_cli(
        "transfer",
        "-p",
        "params.yaml",
        "-S",
        "transfer.source=pretrain",
        "--data",
        str(prepared),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "run `sounding pretrain` first" in result.stderr
    assert (tmp_path / "results" / "transfer.json").read_text() == "{}"
    assert not (tmp_path / "plots").exists()
