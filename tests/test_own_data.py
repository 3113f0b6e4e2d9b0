"""A user's small, multichannel, any-length data: standardisation inside the model, the small-set budget
and selection rules, the length-agnostic FCN, and the studies that skip what does not fit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from sounding import stages
from sounding.config import Params
from sounding.data.prepare import Split, load_prepared, prepare
from sounding.errors import BadInput
from sounding.models.factory import build_net, load_net
from sounding.models.nets.base import Standardize
from sounding.training import batch_size, build_system, learning_rate, passes_per_epoch, selection
from sounding.tuning import folds
from tests.conftest import run_cli, tiny_params, write_params


def _series(
    n: int, scales: tuple[float, ...], length: int = 30, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by the frequency of a sine in channel 0 (1 or 3 periods); the other channels
    are noise. Channel c is ``scales[c]`` times larger and shifted by as much."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.linspace(0, 2 * np.pi, length)
    x = rng.standard_normal((n, len(scales), length))
    x[:, 0] = 0.5 * x[:, 0] + np.sin(t[None, :] * (1 + 2 * y[:, None]))
    x = x * np.asarray(scales)[None, :, None] + np.asarray(scales)[None, :, None]
    return x.astype(np.float32), y


def _own(tmp_path: Path, scales: tuple[float, ...], standardize: str = "auto", **overrides: object) -> tuple:
    x, y = _series(120, scales)
    x_test, y_test = _series(60, scales, seed=1)
    np.savez(tmp_path / "own.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    params = tiny_params(
        **{
            "data.source": "npz",
            "data.path": str(tmp_path / "own.npz"),
            "data.standardize": standardize,
            "models.fcn.channels": [8, 8],
            "models.fcn.kernels": [5, 3],
            **overrides,
        }
    )
    prepare(params.data, params.seed, tmp_path / "prepared")
    return params, tmp_path / "prepared"


def test_channel_standardisation_is_fitted_on_the_training_part_only() -> None:
    x = torch.tensor([[[1.0, 3.0], [100.0, 300.0]], [[1.0, 3.0], [100.0, 300.0]]])  # [N=2, C=2, L=2]
    scaler = Standardize("channel", (2, 2), "sequence")
    scaler.fit(x)
    assert scaler.mean.flatten().tolist() == [2.0, 200.0] and scaler.std.flatten().tolist() == [1.0, 100.0]
    assert torch.equal(scaler(x), torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]] * 2))
    series = Standardize("series", (2, 2), "sequence")(torch.tensor([[[5.0, 7.0], [0.0, 0.0]]]))
    assert series.tolist() == [[[-1.0, 1.0], [0.0, 0.0]]]  # per series and channel; a constant one is centred


def test_auto_standardises_own_data_and_leaves_the_benchmarks_raw() -> None:
    assert Params().data.standardize_mode == "none"
    assert Params().with_overrides({"data.source": "npz"}).data.standardize_mode == "channel"
    assert Params().with_overrides(
        {"data.source": "ts", "data.standardize": "series"}
    ).data.standardize_mode == ("series")


def test_small_sets_get_small_batches_and_several_passes_an_epoch() -> None:
    p = Params()  # batch 100, at least 10 batches a pass, 150 epochs, at least 2000 steps
    assert (batch_size(p, 3600), passes_per_epoch(p, 3600)) == (100, 1)  # MNIST-1D: unchanged
    assert batch_size(p, 60) == 6 and passes_per_epoch(p, 60) == 2  # 150 epochs × 2 passes × 10 = 3000 steps
    assert batch_size(p, 180) == 18 and passes_per_epoch(p, 180) == 2
    assert (selection(p, 20), selection(p, 400)) == ("min_train_loss", "best_val")
    assert selection(p.with_overrides({"train.select": "best_val"}), 5) == "best_val"


def test_a_small_batch_learns_at_a_rate_scaled_to_it() -> None:
    p = Params()  # lr 0.01 at batches of 100, lr_scaling sqrt
    assert learning_rate(p, batch_size(p, 3600)) == 0.01  # MNIST-1D's batches of 100: unchanged
    assert learning_rate(p, batch_size(p, 36)) == pytest.approx(0.002)  # batches of 4: 0.01 × √(4/100)
    assert learning_rate(p.with_overrides({"train.lr_scaling": "linear"}), 4) == pytest.approx(0.0004)
    assert learning_rate(p.with_overrides({"train.lr_scaling": "none"}), 4) == 0.01


def test_the_module_learns_at_the_rate_of_the_batch_it_trains_in(prepared: Path) -> None:
    data = load_prepared(prepared)
    p = Params()
    # The transfer study's 1% budget: one batch of its 40 labels.
    assert build_system(p, "mlp", data, batch=40).hparams.lr == pytest.approx(0.01 * 0.4**0.5)
    assert build_system(p, "mlp", data).hparams.lr == learning_rate(p, batch_size(p, len(data.train.y)))


def test_served_probabilities_on_raw_inputs_equal_those_at_test_time(tmp_path: Path, monkeypatch) -> None:
    """Channels 1000× apart: the saved model standardises raw inputs itself, in predict and in MLflow."""
    import mlflow

    from sounding.models.classifier import LitClassifier

    monkeypatch.chdir(tmp_path)
    params, prepared = _own(tmp_path, (1.0, 1000.0), **{"train.min_batches": 4})  # batches of 27: lr scaled
    data = load_prepared(prepared)
    assert data.spec.standardize == "channel"
    metrics = stages.train_architecture(
        params,
        "fcn",
        prepared,
        tmp_path / "models/fcn",
        tmp_path / "m.json",
        tmp_path / "plots",
        progress=False,
    )
    net, config = load_net(tmp_path / "models/fcn/model.safetensors", tmp_path / "models/fcn/config.json")
    assert config["net"]["standardize"] == "channel"
    train = torch.as_tensor(data.train.x, dtype=torch.float64)
    assert torch.allclose(net.scaler.mean.flatten().double(), train.mean((0, 2)), rtol=1e-5)
    assert torch.allclose(net.scaler.std.flatten().double(), train.std((0, 2), correction=0), rtol=1e-5)
    system = LitClassifier.load_from_checkpoint(tmp_path / "models/fcn/model.ckpt", weights_only=True)
    assert system.hparams.lr == metrics["lr"] == learning_rate(params, 27) < params.train.lr
    with torch.no_grad():
        at_test = system.net.eval()(torch.as_tensor(data.test.x)).softmax(-1).numpy()
    mlflow.set_tracking_uri(params.tracking.uri)
    served = mlflow.pyfunc.load_model(metrics["model_uri"]).predict(data.test.x)
    np.testing.assert_allclose(served, at_test, rtol=1e-5, atol=1e-6)
    assert float((at_test.argmax(1) == data.test.y).mean()) == pytest.approx(metrics["test_acc"])


def test_channels_on_different_scales_train_like_their_standardised_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    accs = {}
    for name, scales in (("scaled", (1.0, 300.0)), ("standard", (1.0, 1.0))):
        (tmp_path / name).mkdir()
        params, prepared = _own(
            tmp_path / name, scales, **{"train.epochs": 10, "train.min_batches": 10, "train.min_steps": 300}
        )
        out = tmp_path / name
        accs[name] = stages.train_architecture(
            params, "fcn", prepared, out / "models", out / "m.json", out / "plots", progress=False
        )["test_acc"]
    assert accs["scaled"] == pytest.approx(accs["standard"], abs=0.05) and accs["standard"] > 0.9, accs


def test_the_fcn_takes_series_of_any_length_and_channels() -> None:
    net = build_net("fcn", (3, 50), 4, "sequence", channels=[8, 16], kernels=[5, 3]).eval()
    assert net(torch.zeros(2, 3, 50)).shape == (2, 4) and net(torch.zeros(2, 3, 427)).shape == (2, 4)
    assert net.head.in_features == 16
    with pytest.raises(BadInput, match="fcn: takes sequences"):
        build_net("fcn", (8, 8), 10, "image")
    with pytest.raises(BadInput, match=r"channels \(3 blocks\) and kernels \(1\)"):
        Params().with_overrides({"models.fcn.kernels": [3]})


def test_a_tiny_validation_part_selects_on_training_loss_and_tunes_by_cross_validation(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params, prepared = _own(
        tmp_path, (1.0,), **{"train.min_val": 100, "train.epochs": 6, "tune.folds": 3, "tune.n_trials": 2}
    )  # 108 training and 12 validation series
    write_params(tmp_path / "params.yaml", params)
    result = run_cli("tune", "fcn", "--data", str(prepared), "--out", "tuning/fcn", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "each judged by 3-fold cross-validation on 120 samples (train.min_val is 100)" in result.stdout
    best = json.loads((tmp_path / "tuning/fcn/best.json").read_text())
    assert best["folds"] == 3 and best["val_samples"] == 120 and best["adopted"] in ("tuned", "baseline")
    study = optuna.load_study(study_name=best["study"], storage=f"sqlite:///{tmp_path}/tuning/optuna.db")
    # Each value counts the 120 pooled series, each held out by one fold; nothing was pruned.
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert all(round(t.value * 120, 6) == round(t.value * 120) for t in study.trials)
    assert len(list((tmp_path / "tuning/fcn/trials").glob("*/*/fold[0-2]/model.ckpt"))) == 6
    plots = {path.name for path in (tmp_path / "tuning/fcn/plots").iterdir()}
    assert "history.png" in plots and "intermediate.png" not in plots  # no epochs reported, none plotted
    metrics = stages.train_architecture(
        params,
        "fcn",
        prepared,
        tmp_path / "models",
        tmp_path / "m.json",
        tmp_path / "plots",
        progress=False,
        tuned=tmp_path / "tuning/fcn/best.json",
    )
    assert metrics["select"] == "min_train_loss" and metrics["adopted"] == best["adopted"]
    curve = np.genfromtxt(tmp_path / "plots/learning_curve.csv", delimiter=",", names=True)
    assert metrics["seeds"][0]["selected_epoch"] == int(np.argmin(curve["train_loss"]))


def test_cross_validation_folds_are_stratified_disjoint_and_leave_the_test_part_out(tmp_path: Path) -> None:
    _, prepared = _own(tmp_path, (1.0,))
    data = load_prepared(prepared)
    parts = folds(data, 5, seed=0)
    pooled = np.concatenate([data.train.x, data.val.x])
    held = np.concatenate([part.val.x for part in parts])
    assert len(parts) == 5 and len(held) == len(pooled) == 120
    assert sorted(map(bytes, held)) == sorted(map(bytes, pooled))  # each pooled series held out once
    test = set(map(bytes, data.test.x))
    for part in parts:
        assert len(part.train.y) + len(part.val.y) == 120 and np.bincount(part.val.y).tolist() == [12, 12]
        assert not test & set(map(bytes, part.train.x)) and not test & set(map(bytes, part.val.x))
    assert [p.val.y.tolist() for p in folds(data, 5, seed=0)] == [p.val.y.tolist() for p in parts]
    few = replace(
        data,
        train=Split(data.train.x[:5], np.array([0, 1, 0, 1, 0])),
        val=Split(data.val.x[:1], np.array([1])),
    )
    assert len(folds(few, 5, seed=0)) == 3  # the smaller class has 3 series: 3 folds


def test_studies_that_do_not_fit_the_data_are_skipped_and_recorded(tmp_path: Path, monkeypatch) -> None:
    """Pretrained MNIST-1D networks do not fit 2-channel series of length 30, nor does the GAN."""
    from sounding.generative import train_gan
    from sounding.transfer import pretrain, run_transfer

    monkeypatch.chdir(tmp_path)
    params, prepared = _own(tmp_path, (1.0, 5.0), **{"transfer.archs": ["cnn"]})
    pretrain(
        params, tmp_path / "pretrain_data", tmp_path / "pretrained", tmp_path / "pm", tmp_path / "pp", False
    )
    summary = run_transfer(params, prepared, tmp_path / "pretrained", tmp_path / "t.json", tmp_path / "tp")
    assert summary["results"] == {} and "cnn" in summary["skipped"]
    assert json.loads((tmp_path / "t.json").read_text())["skipped"] == summary["skipped"]
    named = params.with_overrides({"transfer.source": str(tmp_path / "pretrained/cnn/model.safetensors")})
    with pytest.raises(BadInput, match="does not fit"):  # a source the user names must fit
        run_transfer(named, prepared, tmp_path / "pretrained", tmp_path / "t2.json", tmp_path / "tp2")
    gan = train_gan(
        params, prepared, tmp_path / "judge", tmp_path / "gan", tmp_path / "g.json", tmp_path / "gp"
    )
    assert "one-channel series" in gan["skipped"] and (tmp_path / "gan" / "SKIPPED.txt").is_file()


def test_patience_stops_a_fit_that_stopped_improving(params: Params, prepared: Path, tmp_path: Path) -> None:
    from sounding.training import fit

    data = load_prepared(prepared)
    p = params.with_overrides({"train.epochs": 40, "train.patience": 2, "train.select": "best_val"})
    result = fit(p, "linear", 0, data, tmp_path / "run", progress=False, evaluate=False)
    best = int(result.metrics["selected_epoch"])
    assert len(result.history) == best + 3 < 40  # the best epoch, then 2 without a better val/acc
