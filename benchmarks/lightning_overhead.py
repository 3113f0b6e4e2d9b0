"""Lightning's overhead over a plain PyTorch loop doing the same work, per architecture, in seconds an
epoch and milliseconds a step (target: under Lightning's own parity bound, 0.05 s an epoch).

Both sides train the same network from the same initial weights on the same MNIST-1D batches (same
order, batch size, epochs, thread count and optimiser), validate once per epoch, keep the per-epoch
figures (loss, accuracy, per-layer gradient norms), and write the best-validation checkpoint when it
improves and a resumable checkpoint every epoch, atomically. The Lightning side is exactly
``sounding.training.fit``'s Trainer, callbacks, DataModule and checkpoints (``train_system``), minus the
test pass.

    python -m benchmarks.lightning_overhead [--epochs 150] [--pairs 3] [--archs mlp,cnn,rnn]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Figure, interleaved, machine, prepared_default_data
from sounding.config import ARCHS, Params
from sounding.data.module import EpochPermutation, TensorDataModule
from sounding.files import atomic_write
from sounding.models.nets.base import weight_matrices
from sounding.training import build_system, train_system

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
TARGET_S = 0.05
"""Seconds an epoch: the bound Lightning's own parity tests allow over plain PyTorch."""
EPOCHS = {"rnn": 30}
"""Fits run ``train.epochs`` (150), as ``sounding train`` does; the GRU's 30 epochs already take 7 s."""
MIN_SECONDS = 20.0
"""Pairs are added (up to 15) until they fill this: sub-second fits' medians of 3 pairs moved by ±5%."""


def lightning_fit(params: Params, arch: str, data, state: dict, workdir: Path) -> None:
    system = build_system(params, arch, data)
    system.load_state_dict(state)
    datamodule = TensorDataModule(data, params.train.batch_size, params.seed)
    for old in workdir.glob("*.ckpt"):
        old.unlink()  # a fresh fit each time, never a resume
    train_system(params, system, datamodule, workdir, params.seed)


def plain_fit(params: Params, arch: str, data, state: dict, workdir: Path) -> None:
    system = build_system(params, arch, data)
    system.load_state_dict(state)
    net = system.net
    optimizer = system.configure_optimizers()
    weights = [p for _, p in weight_matrices(net)]
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    xv, yv = torch.as_tensor(data.val.x), torch.as_tensor(data.val.y)
    order = EpochPermutation(len(y), params.seed)
    history, best_acc = [], -1.0
    for epoch in range(params.train.epochs):
        torch.default_generator.manual_seed(params.seed * 100_003 + epoch)  # as EpochSeed does on a CPU
        order.set_epoch(epoch)
        net.train()
        sums, grad_norms = torch.zeros(4), torch.zeros(len(weights))
        for b in order.indices().split(params.train.batch_size):
            logits = net(x[b])
            loss = F.cross_entropy(logits, y[b])
            with torch.no_grad():
                correct = (logits.argmax(1) == y[b]).sum()
                sums += torch.stack([loss * len(b), correct, loss.new_tensor(len(b)), ~torch.isfinite(loss)])
            optimizer.zero_grad()
            loss.backward()
            grad_norms += torch.stack(torch._foreach_norm([p.grad for p in weights]))
            optimizer.step()
        if sums[3]:
            raise RuntimeError("diverged")
        net.eval()
        with torch.no_grad():
            val_logits = net(xv)
            val_loss = F.cross_entropy(val_logits, yv).item()
            val_acc = (val_logits.argmax(1) == yv).float().mean().item()
        history.append(
            {"epoch": epoch, "val/loss": val_loss, "val/acc": val_acc, "train/loss": float(sums[0])}
        )
        checkpoint = {"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        if val_acc > best_acc:  # the best-validation weights, as fit() keeps them
            best_acc = val_acc
            atomic_write(workdir / "best.ckpt", lambda tmp, c=checkpoint: torch.save(c, tmp), fsync=False)
        checkpoint["history"] = history
        atomic_write(workdir / "last.ckpt", lambda tmp, c=checkpoint: torch.save(c, tmp), fsync=False)


def measure(epochs: int | None = None, pairs: int = 3, archs: tuple[str, ...] = ARCHS) -> list[Figure]:
    """Figure 1: Lightning's overhead over the plain loop per architecture (printed as it goes), at
    ``epochs`` or each architecture's default length: the median over pairs of (Lightning − plain)."""
    defaults = Params().with_overrides({"compute.accelerator": "cpu"})
    torch.set_num_threads(defaults.compute.threads)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = prepared_default_data(workdir)
        steps = -(-len(data.train.y) // defaults.train.batch_size)
        print(f"machine: {machine()}")
        print(
            f"batch {defaults.train.batch_size} ({steps} steps an epoch), median of ≥ {pairs} interleaved "
            f"pairs (more, up to 15, until they fill {MIN_SECONDS:.0f} s)"
        )
        print(
            f"{'arch':8} {'epochs':>6} {'lightning s':>12} {'plain s':>10} {'s/epoch':>8} {'ms/step':>8}"
            f"  target < {TARGET_S} s an epoch"
        )
        for arch in archs:
            n = epochs or EPOCHS.get(arch, defaults.train.epochs)
            params = defaults.with_overrides({"train.epochs": n})
            state = build_system(params, arch, data).state_dict()
            ta, tb = interleaved(
                lambda a=arch, s=state, p=params: lightning_fit(p, a, data, s, workdir / "lightning"),
                lambda a=arch, s=state, p=params: plain_fit(p, a, data, s, workdir),
                pairs,
                min_seconds=MIN_SECONDS,
            )
            per_epoch = statistics.median(a - b for a, b in zip(ta, tb, strict=True)) / n
            per_step_ms = 1000 * per_epoch / steps
            ok = per_epoch < TARGET_S
            print(
                f"{arch:8} {n:6d} {statistics.median(ta):12.3f} {statistics.median(tb):10.3f} "
                f"{per_epoch:8.4f} {per_step_ms:8.3f}  {'pass' if ok else 'FALLS SHORT'}",
                flush=True,
            )
            detail = (
                f"{per_step_ms:.2f} ms a step; {statistics.median(ta):.2f} s vs {statistics.median(tb):.2f} s, "
                f"{n} epochs of {steps} steps, {len(ta)} pairs"
            )
            figures.append(
                Figure(
                    1, f"Lightning − plain loop, s an epoch, {arch}", per_epoch, f"< {TARGET_S}", ok, detail
                )
            )
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
