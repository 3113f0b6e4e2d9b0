"""Figure 6: the retraining flow ÷ the same library functions called directly, interleaved pairs, median (≤ 1.05).

Both sides run the whole pipeline (prepare, tune and train per architecture, baselines, pretrain, transfer,
register, report) on the same small params, each in its own workspace, from a clean state every time (no
resumable checkpoint, no Optuna study, no cached result: the flow runs with ``force``). The flow runs its
tasks one at a time (a one-thread runner), so the ratio is Prefect's own cost, not parallelism. It talks to a real
``prefect server`` on 127.0.0.1, whose start-up is timed and reported on its own.

    python -m benchmarks.prefect_overhead [--pairs 3] [--epochs 150]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks.common import Figure, interleaved, machine, ratio
from pipelines.server import prefect_server
from sounding import baselines, registry, report, stages, transfer, tuning
from sounding.config import Params

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
STATE = ("checkpoints", "tuning", ".sounding/prefect")
"""What would let a run skip work (resume, an existing study, cached results): removed before each run."""


def direct(params: Params) -> None:
    """The calls the CLI commands (and the flow's tasks) make, in a valid order, one at a time."""
    stages.prepare(params, "data/prepared")
    for arch in params.train.archs:
        tuning.tune(params, arch, "data/prepared", f"tuning/{arch}", progress=False)
        stages.train_architecture(
            params,
            arch,
            "data/prepared",
            f"models/{arch}",
            f"metrics/{arch}.json",
            f"plots/{arch}",
            progress=False,
            tuned=f"tuning/{arch}/best.json",
        )
    baselines.run_baselines(params, "data/prepared", "metrics/baselines.json")
    transfer.pretrain(
        params, "data/pretrain", "models/pretrained", "metrics/pretrain", "plots/pretrain", False
    )
    transfer.run_transfer(
        params, "data/prepared", "models/pretrained", "metrics/transfer.json", "plots/transfer", False
    )
    registry.register_all(params, "metrics", "data/prepared", "reports/promotion.json")
    report.write_report("metrics", params.train.archs, params.data.source, "reports")


def in_clean(workspace: Path, run: Callable[[], object]) -> Callable[[], None]:
    def clean_run() -> None:
        os.chdir(workspace)
        for path in STATE:
            shutil.rmtree(path, ignore_errors=True)
        run()

    return clean_run


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
            "compute.accelerator": "cpu",
            "retrain.task_runner": "threads",
            "retrain.max_workers": 1,
        }
    )


def measure(pairs: int = 3, epochs: int = 150) -> list[Figure]:
    """Figure 6: flow ÷ direct calls; the server start, not in the ratio, is in the detail."""
    params = bench_params(epochs)
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        start = time.perf_counter()
        with prefect_server(port, home=root / "prefect-home") as url:
            server_s = time.perf_counter() - start
            os.environ["PREFECT_API_URL"] = url
            # Flow and task runs still send their INFO logs to the API, as in production; the console shows
            # warnings only, so that the benchmark's output stays readable.
            os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
            from pipelines.retrain import retrain  # imported once the API URL and logging are set

            for name in ("flow", "direct"):
                (root / name).mkdir()
                (root / name / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
            as_flow = in_clean(root / "flow", lambda: retrain("params.yaml", force=True))
            as_calls = in_clean(root / "direct", lambda: direct(params))
            print(f"machine: {machine()}")
            print(f"prefect server start (to healthy): {server_s:.1f} s (not in the ratio)")
            try:
                flow_t, direct_t = interleaved(as_flow, as_calls, pairs)
            finally:
                os.environ.pop("PREFECT_API_URL")
                os.environ.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
                os.chdir(cwd)
    r = ratio(flow_t, direct_t)
    detail = (
        f"{len(params.train.archs)} architectures, {epochs} epochs, tuning, pretrain, transfer, register, "
        f"report: {statistics.median(flow_t):.1f} s vs {statistics.median(direct_t):.1f} s; per pair "
        + ", ".join(f"{a / b:.3f}" for a, b in zip(flow_t, direct_t, strict=True))
        + f"; server start {server_s:.1f} s, not counted"
    )
    print(f"flow ÷ direct: {r:.3f} ({detail}); target ≤ 1.05: {'pass' if r <= 1.05 else 'FALLS SHORT'}")
    return [Figure(6, "Prefect flow ÷ the same functions called directly", r, "≤ 1.05", r <= 1.05, detail)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=150)
    args = parser.parse_args()
    measure(args.pairs, args.epochs)


if __name__ == "__main__":
    main()
