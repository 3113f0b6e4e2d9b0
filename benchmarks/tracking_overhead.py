"""Training with MLflow tracking ÷ without, same fit, interleaved pairs, median (target ≤ 1.02).

The tracked side runs `sounding.training.fit` inside `tracking.tracked_run` on a sqlite store, exactly as
`sounding train` does: flattened params at start, epoch metrics buffered and sent every few seconds, flush and
close at the end. The untracked side runs the same fit with no run.

    python -m benchmarks.tracking_overhead [--arch mlp] [--epochs 20] [--pairs 5]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import interleaved, machine, ratio
from sounding import tracking
from sounding.config import Params
from sounding.data.prepare import load_prepared, prepare
from sounding.training import fit

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = Params().with_overrides(
            {
                "train.epochs": args.epochs,
                "compute.accelerator": "cpu",
                "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
            }
        )
        prepare(params.data, params.seed, work / "data")
        data = load_prepared(work / "data")

        def untracked() -> None:
            shutil.rmtree(work / "a", ignore_errors=True)
            fit(params, args.arch, params.seed, data, work / "a", progress=False)

        def tracked() -> None:
            shutil.rmtree(work / "b", ignore_errors=True)
            with tracking.tracked_run(params, f"{args.arch}-bench", {"stage": "bench"}) as run_id:
                fit(params, args.arch, params.seed, data, work / "b", run_id=run_id, progress=False)

        print(f"machine: {machine()}")
        with_t, without = interleaved(tracked, untracked, args.pairs)
        r = ratio(with_t, without)
        print(
            f"{args.arch}, {args.epochs} epochs, {args.pairs} pairs: with MLflow {sorted(with_t)[args.pairs // 2]:.3f} s, "
            f"without {sorted(without)[args.pairs // 2]:.3f} s, ratio {r:.3f} (target ≤ 1.02: "
            f"{'pass' if r <= 1.02 else 'FALLS SHORT'})"
        )


if __name__ == "__main__":
    main()
