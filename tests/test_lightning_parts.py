"""The training loop is Lightning's own: stock callbacks, precision plugins and the data pipeline work
unchanged, and the loop trains exactly as a plain PyTorch loop over the same batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from optuna_integration import PyTorchLightningPruningCallback

from sounding.config import Params
from sounding.data.module import ArrayDataset, EpochPermutation, TensorDataModule
from sounding.data.prepare import load_prepared
from sounding.models.classifier import LitClassifier
from sounding.training import EpochSeed, build_system, fit


def test_a_fit_is_a_plain_pytorch_loop_over_the_same_batches(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    """Same seed, same initial weights, same batches in the same order, same dropout masks, same
    updates: every epoch's training loss and the final weights equal those of a hand-written loop."""
    data = load_prepared(prepared)
    p = params.with_overrides(
        {"train.select": "last", "models.mlp.dropout": 0.2, "train.gradient_clip_val": 0.5, "train.epochs": 3}
    )
    result = fit(p, "mlp", 7, data, tmp_path / "run", progress=False, evaluate=False)

    L.seed_everything(7, verbose=False)
    system = build_system(p, "mlp", data)
    optimizer = system.configure_optimizers()
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    order = EpochPermutation(len(y), seed=7)
    for epoch in range(3):
        torch.manual_seed(7 * 100_003 + epoch)  # EpochSeed
        order.set_epoch(epoch)
        loss_sum = 0.0
        system.net.train()
        for idx in order.indices().split(p.train.batch_size):
            optimizer.zero_grad()
            loss = F.cross_entropy(system.net(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for g in optimizer.param_groups for q in g["params"]], 0.5)
            optimizer.step()
            loss_sum += float(loss) * len(idx)
        assert result.history[epoch]["train/loss"] == pytest.approx(loss_sum / len(y), rel=1e-6)
    trained = LitClassifier.load_from_checkpoint(result.checkpoint, weights_only=True).net.state_dict()
    for name, value in system.net.state_dict().items():
        assert torch.equal(trained[name], value), name


def test_bf16_mixed_on_cpu_trains_and_clips_the_real_gradients(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    """Clipping is the Trainer's: the logged norms are those of the true gradients (a scaled or wrongly
    cast gradient would be far off the 32-bit run's), and the update is bounded by the clip value."""
    data = load_prepared(prepared)
    p = params.with_overrides(
        {"train.epochs": 1, "train.optimizer": "sgd", "train.lr": 0.1, "train.gradient_clip_val": 1e-3}
    )
    runs = {}
    for precision in ("32", "bf16-mixed"):
        q = p.with_overrides({"compute.precision": precision, "compute.accelerator": "cpu"})
        runs[precision] = fit(q, "cnn", 0, data, tmp_path / precision, progress=False, evaluate=False)
    full, half = runs["32"].history[0], runs["bf16-mixed"].history[0]
    for key in [k for k in full if k.startswith("grad_norm/")]:
        assert half[key] == pytest.approx(full[key], rel=0.1), key
    torch.manual_seed(0)
    start = build_system(p, "cnn", data).net.state_dict()
    end = LitClassifier.load_from_checkpoint(
        runs["bf16-mixed"].checkpoint, weights_only=True
    ).net.state_dict()
    moved = torch.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start))
    steps = -(-len(data.train.y) // p.train.batch_size)
    # SGD with momentum 0.9: each step moves the weights by at most lr × clip × (1 + 0.9 + 0.81 + …) < lr × clip × 10
    assert moved < steps * 0.1 * 1e-3 * 10 + 1e-6


def test_lightnings_early_stopping_stops_the_fit(params: Params, prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    stop = EarlyStopping(monitor="val/loss", patience=0, min_delta=10.0)  # no epoch improves by 10
    result = fit(
        params.with_overrides({"train.epochs": 10}),
        "linear",
        0,
        data,
        tmp_path / "run",
        callbacks=[stop],
        progress=False,
        evaluate=False,
    )
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert stop.stopped_epoch == 1


def test_optunas_stock_pruning_callback_prunes_trials(params: Params, prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.99))

    def objective(trial: optuna.Trial) -> float:
        pruning = PyTorchLightningPruningCallback(trial, monitor="val/acc")
        run = tmp_path / f"t{trial.number}"
        result = fit(
            params, "linear", trial.number, data, run, callbacks=[pruning], progress=False, evaluate=False
        )
        return result.metrics["val/acc"]

    study.optimize(objective, n_trials=2)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)  # pruned at the first epoch's report


def test_training_batches_follow_the_seeded_epoch_order(params: Params, prepared: Path) -> None:
    data = load_prepared(prepared)
    module = TensorDataModule(data, batch_size=64, seed=3)
    loader = module.train_dataloader()
    loader.sampler.set_epoch(2)
    batches = list(loader)
    expected = EpochPermutation(len(data.train.y), 3)
    expected.set_epoch(2)
    idx = expected.indices()
    assert len(batches) == -(-len(idx) // 64)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.as_tensor(data.train.y)[idx])
    assert all(len(y) == 64 for _, y in batches[:-1])


def test_memory_mapped_arrays_give_the_same_batches_as_arrays_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2, 7)).astype(np.float32), rng.integers(0, 3, size=50)
    np.save(tmp_path / "x.npy", x)
    mapped = ArrayDataset(np.load(tmp_path / "x.npy", mmap_mode="r"), y)
    in_memory = ArrayDataset(x, y)
    assert mapped.mapped and not in_memory.mapped
    idx = [4, 0, 49, 4]
    for (xa, ya), (xb, yb) in [(mapped.__getitems__(idx), in_memory.__getitems__(idx))]:
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == torch.float32


def test_epoch_seed_is_a_stock_callback_on_any_module() -> None:
    """``EpochSeed`` needs nothing of ``LitClassifier``: a plain LightningModule's dropout masks repeat."""
    seeds = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            seeds.append(float(torch.rand(())))
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=4)
    for _ in range(2):
        trainer = L.Trainer(
            max_epochs=2,
            callbacks=[EpochSeed(5)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Module(), loader)
    assert seeds[:2] == seeds[2:] and seeds[0] != seeds[1]
