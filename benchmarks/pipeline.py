"""The whole pipeline on the defaults, as `make run` runs it, in a fresh clone: figures 5 and 7.

7: wall time of `dvc repro` broken down by stage (each stage's time runs from its "Running stage" line to
   the next one), with the accuracies reached; target ≤ 15 minutes.
5: a second, no-op `dvc repro` ÷ the full run (median of 3), and its absolute time; targets < 0.05, < 1 s.
3: each tuning study's bookkeeping (wall time − its trials' fit time) ÷ its wall time, from
   `tuning/ARCH/best.json`: the studies the pipeline runs on the defaults; target ≤ 0.02.

The clone uses this checkout's `.venv`; the install that `make run` does on a fresh machine is not timed.

    python -m benchmarks.pipeline [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, machine

REPO = Path(__file__).resolve().parents[1]


def timed_repro(root: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Run `dvc repro`, echoing its output; return its wall time and each stage's share of it."""
    start = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, start
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        if line.startswith("Running stage '"):
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = line.split("'")[1], now
        print(line, end="", flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"dvc repro failed with exit code {proc.returncode}")
    end = time.perf_counter()
    if current:
        stages[current] = end - since
    return end - start, stages


def measure(keep: Path | None = None) -> list[Figure]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp) / "sounding"
        subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
        print(f"machine: {machine()}")
        total, stages = timed_repro(root, env)
        noops = []
        for _ in range(3):
            start = time.perf_counter()
            out = subprocess.run(
                ["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, check=True
            )
            noops.append(time.perf_counter() - start)
            assert "Running stage" not in out.stdout, out.stdout
        accuracy = {
            arch: json.loads((root / "metrics" / f"{arch}.json").read_text())["test_acc"]
            for arch in ("linear", "mlp", "cnn", "rnn")
        }
        studies = {
            arch: json.loads((root / "tuning" / arch / "best.json").read_text())
            for arch in ("linear", "mlp", "cnn", "rnn")
        }
    noop = statistics.median(noops)
    by_stage = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items())
    reached = ", ".join(f"{arch} {acc:.3f}" for arch, acc in accuracy.items())
    print(f"dvc repro {total:.0f} s: {by_stage}\ntest accuracy (mean of seeds): {reached}")
    print(f"no-op dvc repro {noop:.2f} s = {noop / total:.4f} of the full run")
    return [
        Figure(
            5,
            "no-op dvc repro ÷ full run",
            noop / total,
            "< 0.05",
            noop / total < 0.05,
            f"{noop:.2f} s vs {total:.0f} s",
        ),
        Figure(5, "no-op dvc repro, seconds", noop, "< 1 s", noop < 1, "median of 3"),
        *(
            Figure(
                3,
                f"tuning bookkeeping ÷ study wall time, {arch} (the pipeline's study)",
                s["bookkeeping_fraction"],
                "≤ 0.02",
                s["bookkeeping_fraction"] <= 0.02,
                f"{s['wall_s'] - s['fit_s']:.2f} s of {s['wall_s']:.1f} s, {sum(s['counts'].values())} trials",
            )
            for arch, s in studies.items()
            if s.get("bookkeeping_fraction") is not None
        ),
        Figure(
            7,
            "dvc repro on the defaults, minutes",
            total / 60,
            "≤ 15",
            total <= 900,
            f"{by_stage}; test acc {reached}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="clone here and keep it")
    measure(parser.parse_args().keep)


if __name__ == "__main__":
    main()
