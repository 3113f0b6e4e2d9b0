"""Figure 6: `sounding retrain` (the Prefect flow running dvc.yaml's stages) ÷ `dvc repro`, interleaved pairs,
median (≤ 1.05 on 2 cores).

Both run the whole pipeline on the checkout's ``params.yaml`` (the default pipeline; ``--small``: a small
whole-pipeline variant, about 3 minutes a side), each in its own copy of the repository, from a clean state
every time (``--force``; no resumable checkpoint, no Optuna study). The flow runs independent stages
side by side (``retrain.max_workers``) where DVC runs one stage at a time; both run every stage's command in
its own process, so the ratio is the flow's overhead (Prefect's ephemeral server, its DVC status and commit
calls) against what it gains from running stages side by side.

    python -m benchmarks.prefect_overhead [--pairs 1] [--small [--epochs 150]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import Figure, interleaved, machine, ratio
from sounding.config import Params
from tests.conftest import copy_repo

BIN = Path(sys.executable).parent
STATE = ("checkpoints", "tuning")
"""What would let a run skip work (resume, an existing study): removed before each run."""


def _run(workspace: Path, *command: str) -> None:
    for path in STATE:
        shutil.rmtree(workspace / path, ignore_errors=True)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    subprocess.run(command, cwd=workspace, env=env, check=True, capture_output=True)


def bench_params(epochs: int) -> Params:
    """The small whole-pipeline params both sides run: small data and few trials, but the default training
    length (Prefect's cost is per task, about 80 ms; a toy workload of seconds would overstate its share
    of a real run, whose tasks take minutes)."""
    return Params().with_overrides(
        {
            "data.mnist1d.num_samples": 2000,
            "train.archs": ["linear", "mlp", "cnn"],
            "train.epochs": epochs,
            "train.n_seeds": 1,
            "tune.n_trials": 2,
            "tune.epochs": 3,
            "transfer.archs": ["mlp"],
            "transfer.budgets": [0.2, 1.0],
            "transfer.steps": 100,
            "transfer.pretrain_epochs": 3,
            "transfer.source_data.mnist1d.num_samples": 2000,
            "depth.depths": [2, 8],
            "gan.epochs": 10,
            "compute.accelerator": "cpu",
        }
    )


def measure(pairs: int = 1, small: bool = False, epochs: int = 150) -> list[Figure]:
    """Figure 6: ``sounding retrain --force`` ÷ ``dvc repro --force`` on the same params: the checkout's
    ``params.yaml``, or ``bench_params(epochs)`` when ``small``."""
    params = bench_params(epochs) if small else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("flow", "dvc"):
            copy_repo(root / name)
            if params is not None:
                (root / name / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
        print(f"machine: {machine()}")
        flow_t, dvc_t = interleaved(
            lambda: _run(root / "flow", str(BIN / "sounding"), "retrain", "--force"),
            lambda: _run(root / "dvc", str(BIN / "dvc"), "repro", "--force"),
            pairs,
            warm_up=False,  # a whole pipeline a side: a warm-up pair would double the minutes for nothing
        )
    r = ratio(flow_t, dvc_t)
    what = (
        f"small params ({len(params.train.archs)} architectures, {epochs} epochs, tuning, baselines, depth, GAN, "
        "pretrain, transfer, register, report)"
        if small
        else "the default pipeline (params.yaml)"
    )
    detail = (
        f"{what}: {statistics.median(flow_t):.1f} s vs {statistics.median(dvc_t):.1f} s; "
        "per pair " + ", ".join(f"{a / b:.3f}" for a, b in zip(flow_t, dvc_t, strict=True))
    )
    print(f"retrain ÷ dvc repro: {r:.3f} ({detail}); target ≤ 1.05: {'pass' if r <= 1.05 else 'FALLS SHORT'}")
    return [Figure(6, "sounding retrain (Prefect) ÷ dvc repro, wall time", r, "≤ 1.05", r <= 1.05, detail)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="small whole-pipeline params, not params.yaml")
    parser.add_argument("--epochs", type=int, default=150, help="training epochs of --small")
    args = parser.parse_args()
    measure(args.pairs, args.small, args.epochs)


if __name__ == "__main__":
    main()
