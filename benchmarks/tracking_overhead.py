"""Training with MLflow tracking ÷ without, same fit, interleaved pairs, median (target ≤ 1.02).

The tracked side runs `sounding.training.fit` inside `tracking.tracked_run` on a sqlite store, exactly as
`sounding train` does: flattened params at start, epoch metrics buffered and sent every few seconds, flush and
close at the end. The untracked side runs the same fit with no run.

    python -m benchmarks.tracking_overhead [--arch mlp] [--epochs 150] [--pairs 5]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Figure, interleaved, machine, prepared_default_data, ratio
from sounding import tracking
from sounding.config import Params
from sounding.training import fit

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
MIN_SECONDS = 60.0
"""Pairs are added (up to 15) until they fill this: a 3-second fit moves by ±3% from one pair to the next
on a quiet machine, and the median of 5 pairs by as much as the 2% under test (1.03 and 0.975 in two
runs of the same code)."""


def measure(arch: str = "mlp", epochs: int = 150, pairs: int = 5) -> list[Figure]:
    """Figure 4: training with MLflow tracking ÷ without."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = Params().with_overrides(
            {
                "train.epochs": epochs,
                "compute.accelerator": "cpu",
                "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
            }
        )
        data = prepared_default_data(work)

        def untracked() -> None:
            shutil.rmtree(work / "a", ignore_errors=True)
            fit(params, arch, params.seed, data, work / "a", progress=False)

        def tracked() -> None:
            shutil.rmtree(work / "b", ignore_errors=True)
            with tracking.tracked_run(params, f"{arch}-bench", {"stage": "bench"}) as run_id:
                fit(params, arch, params.seed, data, work / "b", run_id=run_id, progress=False)

        print(f"machine: {machine()}")
        with_t, without = interleaved(tracked, untracked, pairs, min_seconds=MIN_SECONDS)
    r = ratio(with_t, without)
    detail = (
        f"{arch}, {epochs} epochs: {statistics.median(with_t):.2f} s vs {statistics.median(without):.2f} s, "
        f"{len(with_t)} pairs"
    )
    print(
        f"with MLflow ÷ without: {r:.3f} ({detail}); target ≤ 1.02: {'pass' if r <= 1.02 else 'FALLS SHORT'}"
    )
    return [Figure(4, "training with MLflow ÷ without", r, "≤ 1.02", r <= 1.02, detail)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    measure(args.arch, args.epochs, args.pairs)


if __name__ == "__main__":
    main()
