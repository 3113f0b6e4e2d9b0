"""Achieved training FLOP/s ÷ this machine's matmul peak, per architecture, measured in one run.

FLOPs of one training step (forward + backward, batch ``train.batch_size``) are counted with
``torch.utils.flop_counter``; steps per second come from ``sounding.training.fit`` itself (its
``samples_per_s``); the peak is ``torch.matmul`` on 1024 × 1024 float32 matrices at the same thread count.
Targets: MLP ≥ 0.30, CNN ≥ 0.15, GRU ≥ 0.02.

    python -m benchmarks.flops [--epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Figure, machine, prepared_default_data
from sounding.config import Params
from sounding.training import build_system, fit

TARGETS = {"mlp": 0.30, "cnn": 0.15, "rnn": 0.02}


def matmul_peak(n: int = 1024, repeats: int = 7) -> float:
    """FLOP/s of ``torch.matmul`` on n × n float32 matrices (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def step_flops(params: Params, arch: str, data) -> int:
    """FLOPs of one optimizer step's forward and backward passes on a training batch."""
    net = build_system(params, arch, data).net
    x = torch.as_tensor(data.train.x[: params.train.batch_size])
    y = torch.as_tensor(data.train.y[: params.train.batch_size])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops()


def measure(epochs: int = 10) -> list[Figure]:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    params = Params().with_overrides({"train.epochs": epochs, "compute.accelerator": "cpu"})
    torch.set_num_threads(params.compute.threads)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_default_data(Path(tmp))
        print(f"machine: {machine()}")
        peak = matmul_peak()
        print(f"matmul peak at {torch.get_num_threads()} thread(s): {peak / 1e9:.1f} GFLOP/s")
        for arch, target in TARGETS.items():
            flops = step_flops(params, arch, data)
            result = fit(params, arch, params.seed, data, Path(tmp) / arch, progress=False, evaluate=False)
            achieved = flops * result.samples_per_s / params.train.batch_size
            share = achieved / peak
            detail = f"{flops / 1e6:.1f} MFLOP/step, {achieved / 1e9:.2f} of {peak / 1e9:.1f} GFLOP/s"
            print(f"{arch}: {detail}: {share:.3f} (target ≥ {target})")
            figures.append(
                Figure(
                    2, f"training FLOP/s ÷ matmul peak, {arch}", share, f"≥ {target}", share >= target, detail
                )
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    measure(parser.parse_args().epochs)


if __name__ == "__main__":
    main()
