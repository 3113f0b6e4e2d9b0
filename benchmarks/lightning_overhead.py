"""Lightning fit ÷ a plain PyTorch loop doing the same work, per architecture (target ≤ 1.10).

Both sides train the same network from the same initial weights on the same in-memory MNIST-1D tensors,
same batch size, epochs, thread count, shuffling and optimiser, validate once per epoch, accumulate the
same per-step statistics (loss, accuracy, per-layer gradient norms), keep the best-validation weights and
write a resumable checkpoint (weights, optimiser, history, best weights) atomically at the same cadence
(``train.checkpoint_every_s``, and after the last epoch). The Lightning side is exactly `sounding.training.fit`'s Trainer and callbacks, minus the test pass.

    python -m benchmarks.lightning_overhead [--epochs 150] [--pairs 3] [--archs mlp,cnn,rnn]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Figure, interleaved, machine, prepared_default_data, ratio
from sounding.config import ARCHS, Params
from sounding.data.module import EpochPermutation, TensorDataModule
from sounding.files import atomic_write
from sounding.models.nets.base import weight_matrices
from sounding.training import EpochCheckpoint, EpochSeed, build_system, make_trainer

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
TARGET = 1.10
EPOCHS = {"rnn": 30}
"""Fits run ``train.epochs`` (150), as ``sounding train`` does: Lightning's fixed cost per fit (building the
Trainer, about 7 ms) was 2.4% of a 30-epoch linear fit. The GRU's 30 epochs already take 7 s a fit."""
MIN_SECONDS = 20.0
"""Pairs are added (up to 15) until they fill this: sub-second fits' medians of 3 pairs moved by ±5%."""


def lightning_fit(params: Params, arch: str, data, state: dict, workdir: Path) -> None:
    system = build_system(params, arch, data)
    system.load_state_dict(state)
    recorder = EpochCheckpoint(workdir / "last.ckpt", every_s=params.train.checkpoint_every_s)
    trainer = make_trainer(params, [EpochSeed(params.seed), recorder])
    datamodule = TensorDataModule(data, params.train.batch_size, params.seed, group_batches=True)
    trainer.fit(system, datamodule=datamodule)


def plain_fit(params: Params, arch: str, data, state: dict, workdir: Path) -> None:
    system = build_system(params, arch, data)
    system.load_state_dict(state)
    net = system.net
    optimizer = system.configure_optimizers()
    weights = [p for _, p in weight_matrices(net)]
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    xv, yv = torch.as_tensor(data.val.x), torch.as_tensor(data.val.y)
    order = EpochPermutation(len(y), True, params.seed)
    history, best = [], {"epoch": -1, "val/acc": -1.0, "state": None}
    last_write = 0.0
    for epoch in range(params.train.epochs):
        torch.default_generator.manual_seed(params.seed * 100_003 + epoch)  # as EpochSeed does on a CPU
        order.set_epoch(epoch)
        net.train()
        loss_sum, correct, grad_sq = torch.zeros(()), torch.zeros(()), torch.zeros(len(weights))
        idx = order.indices()
        for start in range(0, len(idx), params.train.batch_size):
            b = idx[start : start + params.train.batch_size]
            logits = net(x[b])
            loss = F.cross_entropy(logits, y[b])
            if not torch.isfinite(loss):
                raise RuntimeError("diverged")
            loss_sum += loss.detach() * len(b)
            correct += (logits.argmax(1) == y[b]).sum()
            optimizer.zero_grad()
            loss.backward()
            grad_sq += torch.stack(torch._foreach_norm([p.grad for p in weights]))
            optimizer.step()
        net.eval()
        with torch.no_grad():
            val_logits = net(xv)
            val_loss = F.cross_entropy(val_logits, yv).item()
            val_acc = (val_logits.argmax(1) == yv).float().mean().item()
        row = {"epoch": epoch, "val/loss": val_loss, "val/acc": val_acc, "train/loss": loss_sum.item()}
        history.append(row)
        if val_acc > best["val/acc"]:  # keep the best-validation weights, as fit() does
            best = {
                "epoch": epoch,
                "val/acc": val_acc,
                "state": {k: v.clone() for k, v in net.state_dict().items()},
            }
        if (
            epoch + 1 == params.train.epochs
            or time.monotonic() - last_write >= params.train.checkpoint_every_s
        ):
            state = {
                "state_dict": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": json.dumps(history),
                "best": best,
            }
            atomic_write(workdir / "plain.ckpt", lambda tmp, s=state: torch.save(s, tmp), fsync=False)
            last_write = time.monotonic()


def measure(epochs: int | None = None, pairs: int = 3, archs: tuple[str, ...] = ARCHS) -> list[Figure]:
    """Figure 1: Lightning fit ÷ plain loop per architecture (printed as it goes), at ``epochs`` or each
    architecture's default length."""
    defaults = Params().with_overrides({"compute.accelerator": "cpu"})
    torch.set_num_threads(defaults.compute.threads)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = prepared_default_data(workdir)
        print(f"machine: {machine()}")
        print(
            f"batch {defaults.train.batch_size}, median of ≥ {pairs} interleaved pairs "
            f"(more, up to 15, until they fill {MIN_SECONDS:.0f} s)"
        )
        print(f"{'arch':8} {'epochs':>6} {'lightning s':>12} {'plain s':>10} {'ratio':>7}  target ≤ {TARGET}")
        for arch in archs:
            n = epochs or EPOCHS.get(arch, defaults.train.epochs)
            params = defaults.with_overrides({"train.epochs": n})
            state = build_system(params, arch, data).state_dict()
            ta, tb = interleaved(
                lambda a=arch, s=state, p=params: lightning_fit(p, a, data, s, workdir),
                lambda a=arch, s=state, p=params: plain_fit(p, a, data, s, workdir),
                pairs,
                min_seconds=MIN_SECONDS,
            )
            r = ratio(ta, tb)
            ok = r <= TARGET
            print(
                f"{arch:8} {n:6d} {statistics.median(ta):12.3f} {statistics.median(tb):10.3f} {r:7.3f}  "
                f"{'pass' if ok else 'FALLS SHORT'}",
                flush=True,
            )
            detail = (
                f"{statistics.median(ta):.2f} s vs {statistics.median(tb):.2f} s, {n} epochs, {len(ta)} pairs"
            )
            figures.append(Figure(1, f"Lightning fit ÷ plain loop, {arch}", r, f"≤ {TARGET}", ok, detail))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="[train.epochs; 30 for rnn]")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--archs", default=",".join(ARCHS))
    args = parser.parse_args()
    measure(args.epochs, args.pairs, tuple(args.archs.split(",")))


if __name__ == "__main__":
    main()
