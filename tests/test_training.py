"""Training: the Lightning system trains, resumes exactly, stops on NaN, and tracks to MLflow."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from sounding import tracking
from sounding.config import Params
from sounding.data.prepare import load_prepared
from sounding.errors import BadInput, TrainingDiverged
from sounding.models.classifier import LitClassifier
from sounding.training import code_version, fingerprint, fit


def test_fit_reports_test_metrics_history_and_throughput(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    data = load_prepared(prepared)
    result = fit(params, "cnn", 0, data, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "grad_norm/head"} <= set(result.history[-1])
    assert {"test/acc", "test/f1_macro", "test/loss"} <= set(result.metrics)
    assert 0.0 <= result.metrics["test/acc"] <= 1.0 and result.samples_per_s > 0
    assert result.n_params == 5_210 and Path(result.checkpoint).is_file()
    # float32 figures as the decimals they stand for (0.932, not 0.9319999814033508)
    assert all(v == tracking.as_number(v) for v in [*result.metrics.values(), *result.history[-1].values()])


def test_validation_metrics_are_those_of_the_epochs_weights(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    """The module validates inside its training epoch (no Lightning validation loop): each epoch's
    ``val/*`` must be the validation loss and accuracy of the weights that epoch ended with."""
    data = load_prepared(prepared)
    p = params.with_overrides({"train.select": "last", "models.mlp.dropout": 0.3})  # dropout: eval mode
    result = fit(p, "mlp", 0, data, tmp_path / "run", progress=False, evaluate=False)
    net = LitClassifier.load_from_checkpoint(result.checkpoint, weights_only=True).net.eval()
    with torch.no_grad():
        logits = net(torch.as_tensor(data.val.x))
    y = torch.as_tensor(data.val.y)
    last = result.history[-1]
    assert last["val/acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-6)
    assert last["val/loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert len({h["val/loss"] for h in result.history}) == len(result.history)  # measured every epoch


def test_checkpoint_loads_with_no_extra_arguments(params: Params, prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    result = fit(params, "mlp", 0, data, tmp_path / "run", progress=False)
    system = LitClassifier.load_from_checkpoint(result.checkpoint, weights_only=True)
    assert system.hparams.arch == "mlp" and tuple(system.hparams.input_shape) == (40,)


def test_same_seed_same_metrics_and_resume_continues_exactly(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    data = load_prepared(prepared)
    params = params.with_overrides({"models.mlp.dropout": 0.2})  # dropout exercises the RNG re-seeding
    straight = fit(params.with_overrides({"train.epochs": 4}), "mlp", 1, data, tmp_path / "a", progress=False)
    again = fit(params.with_overrides({"train.epochs": 4}), "mlp", 1, data, tmp_path / "b", progress=False)
    assert straight.metrics == again.metrics
    fit(params.with_overrides({"train.epochs": 2}), "mlp", 1, data, tmp_path / "c", progress=False)
    resumed = fit(params.with_overrides({"train.epochs": 4}), "mlp", 1, data, tmp_path / "c", progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.metrics["test/acc"] == pytest.approx(straight.metrics["test/acc"], abs=1e-6)
    assert resumed.metrics["test/loss"] == pytest.approx(straight.metrics["test/loss"], rel=1e-5)


def test_lightnings_model_checkpoint_writes_last_every_epoch_and_best_on_val_acc(
    params: Params, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sounding.training import AtomicCheckpointIO

    saved: list[tuple[str, int]] = []
    save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved.append((Path(path).name, checkpoint["epoch"]))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    result = fit(
        params.with_overrides({"train.epochs": 4}),
        "mlp",
        0,
        load_prepared(prepared),
        tmp_path / "r",
        progress=False,
    )
    assert [e for name, e in saved if name == "last.ckpt"] == [0, 1, 2, 3]
    best_epochs = [e for name, e in saved if name == "best.ckpt"]
    accs = [row["val/acc"] for row in result.history]
    # best.ckpt is rewritten exactly when val/acc strictly improves, and fit tests the best epoch's weights
    assert best_epochs == [e for e in range(4) if accs[e] > max(accs[:e], default=-1)]
    assert result.metrics["selected_epoch"] == best_epochs[-1]
    best = torch.load(tmp_path / "r" / "best.ckpt", weights_only=True)["state_dict"]
    shipped = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(best[k], shipped[k]) for k in best)


def test_nan_loss_stops_training_with_a_clear_error(params: Params, prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    with pytest.raises(TrainingDiverged, match=r"mlp: training loss became non-finite in epoch 0"):
        fit(
            params.with_overrides({"train.lr": 1e30, "train.optimizer": "sgd"}),
            "mlp",
            0,
            data,
            tmp_path / "r",
            progress=False,
        )


def test_gradient_clipping_bounds_the_update(params: Params, prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    clipped = params.with_overrides(
        {"train.gradient_clip_val": 1e-3, "train.optimizer": "sgd", "train.lr": 0.1, "train.epochs": 1}
    )
    torch.manual_seed(0)
    start = LitClassifier("linear", (40,), 10).net.head.weight.detach().clone()
    result = fit(clipped, "linear", 0, data, tmp_path / "r", progress=False)
    end = LitClassifier.load_from_checkpoint(result.checkpoint, weights_only=True).net.head.weight.detach()
    # 12 SGD steps with momentum 0.9, each gradient clipped to norm 1e-3, cannot move weights by more than this
    assert (end - start).norm() < 12 * 10 * 0.1 * 1e-3 + 1e-2


def test_l1_penalty_shrinks_weights(params: Params, prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    plain = fit(params, "linear", 0, data, tmp_path / "a", progress=False)
    sparse = fit(params.with_overrides({"train.l1": 0.05}), "linear", 0, data, tmp_path / "b", progress=False)

    def weight_l1(result) -> float:
        return (
            LitClassifier.load_from_checkpoint(result.checkpoint, weights_only=True)
            .net.head.weight.abs()
            .sum()
        )

    assert weight_l1(sparse) < 0.7 * weight_l1(plain)


def test_fingerprint_changes_with_what_shapes_the_result(params: Params) -> None:
    base = fingerprint(params, "cnn", 0, "abc")
    assert fingerprint(params.with_overrides({"models.cnn.channels": 8}), "cnn", 0, "abc") != base
    assert fingerprint(params.with_overrides({"train.lr": 0.1}), "cnn", 0, "abc") != base
    assert fingerprint(params, "cnn", 1, "abc") != base and fingerprint(params, "cnn", 0, "abd") != base
    assert fingerprint(params.with_overrides({"models.mlp.hidden": 8}), "cnn", 0, "abc") == base


def test_fingerprint_includes_the_code_version(params: Params) -> None:
    # A code change must never resume a checkpoint written by the old code.
    assert len(code_version()) == 8 and code_version() in fingerprint(params, "cnn", 0, "abc")


class _Payload:
    """Unpickling this object creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("damage", ["malicious pickle", "truncated"])
def test_a_tampered_resume_checkpoint_is_refused_and_never_runs(
    params: Params, prepared: Path, tmp_path: Path, damage: str, figures: Counter[str]
) -> None:
    import pickle

    data = load_prepared(prepared)
    last = Path(fit(params, "mlp", 0, data, tmp_path / "run", progress=False).checkpoint).parent / "last.ckpt"
    marker = tmp_path / "pwned"
    if damage == "malicious pickle":
        last.write_bytes(pickle.dumps({"state_dict": _Payload(marker), "epoch": 1}))
    else:
        last.write_bytes(last.read_bytes()[:1000])
    figures["faults injected"] += 1
    with pytest.raises(
        BadInput, match=rf"{last}: cannot resume from this checkpoint .*delete .*run to train"
    ):
        fit(params.with_overrides({"train.epochs": 5}), "mlp", 0, data, tmp_path / "run", progress=False)
    assert not marker.exists()


def test_denormals_are_flushed_inside_a_fit_and_the_caller_s_arithmetic_is_left_as_it_was(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    import numpy as np

    from sounding.training import denormals_flushed

    tiny = np.float32(1e-40)  # a float32 denormal
    with denormals_flushed():
        assert (torch.tensor([tiny]) * torch.tensor([1.0])).item() == 0.0
    fit(params, "mlp", 0, load_prepared(prepared), tmp_path / "run", progress=False)
    assert (torch.tensor([tiny]) * torch.tensor([1.0])).item() != 0.0
    assert np.float64(5e-324) * 1.0 != 0.0  # numpy's subnormals too


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_disk_full_after_training_publishes_nothing_fails_the_runs_and_a_rerun_publishes(
    params: Params, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Counter[str]
) -> None:
    """The stage's four outputs come from one run or the other, never a mix; a seed's run is FINISHED only
    once they are published."""
    import errno

    from sounding import stages, tracking

    out = tmp_path / "out"
    paths = {
        "model_dir": out / "models/mlp",
        "results_path": out / "results/mlp.json",
        "plots_dir": out / "plots/mlp",
        "metrics_path": out / "metrics/mlp.json",
    }
    real = stages.write_json
    c = tracking.client(params.tracking.uri)
    seen: list[str] = []

    def statuses_at_the_headline(path: Path, payload: object) -> Path:
        if Path(path).parent.name == "metrics":  # the last output written before they are published
            seen.extend(
                r.info.status
                for r in c.search_runs([c.get_experiment_by_name(params.tracking.experiment).experiment_id])
            )
        return real(path, payload)

    with monkeypatch.context() as patched:
        patched.setattr(stages, "write_json", statuses_at_the_headline)
        stages.train_architecture(params, "mlp", prepared, progress=False, **paths)
    assert seen == ["RUNNING"] * len(params.seeds())  # not FINISHED before what they made is published
    before = _tree(out)

    def disk_full_at_the_headline(path: Path, payload: object) -> Path:
        if Path(path).name == ".mlp.json.partial" and Path(path).parent.name == "metrics":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, payload)

    other = params.with_overrides({"train.epochs": 2})  # another model: new runs
    with monkeypatch.context() as patched, pytest.raises(OSError, match="No space left on device"):
        patched.setattr(stages, "write_json", disk_full_at_the_headline)
        stages.train_architecture(other, "mlp", prepared, progress=False, **paths)
    assert _tree(out) == before  # the old run's outputs, all of them, and no stand-in left
    runs = c.search_runs([c.get_experiment_by_name(params.tracking.experiment).experiment_id])
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == len(other.seeds()) and len(runs) == 2 * len(other.seeds())
    assert all("No space left on device" in r.data.tags["sounding.unpublished"] for r in failed)

    # Space is back: the rerun resumes the same runs and publishes.
    metrics = stages.train_architecture(other, "mlp", prepared, progress=False, **paths)
    assert {s["run_id"] for s in metrics["seeds"]} == {r.info.run_id for r in failed}
    again = [c.get_run(r.info.run_id) for r in failed]
    assert all(r.info.status == "FINISHED" and tracking.UNPUBLISHED_TAG not in r.data.tags for r in again)
    assert metrics["epochs"] == 2 and _tree(out) != before
    figures["faults injected"] += 1
    figures["runs checked"] += len(runs)
