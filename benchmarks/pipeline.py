"""The pipeline on the defaults, as a fresh clone's `make run` runs it: figures 3, 5, 7 and 9.

7: wall time of `make run` (`sounding retrain`: the stages of dvc.yaml that DVC finds stale, run through
   DVC by the Prefect flow, independent ones side by side), with each stage's own time (stages overlap)
   and the accuracies reached; target ≤ 15 minutes. In a fresh clone the tuning stages are up to date:
   their outputs are committed (docs/experiments.md), so DVC runs every other stage.
5: then a no-op `dvc repro` ÷ that run (median of 5), and its absolute time; targets < 0.05, < 1 s.
   Beside it, DVC's floor: the same median in a project of one stage (one param, one output), timed
   alternately with the pipeline's, so what the 18 stages add is read against what any `dvc repro` costs
   on this machine at that moment.
3: each tuning study's bookkeeping (wall time − its trials' fit time) ÷ its wall time, from
   `tuning/ARCH/best.json` (the committed studies of the defaults); target ≤ 0.02.
9: the same `make run` in a second fresh clone whose params.yaml says `compute.workers: 1` (one process:
   stages one at a time, fits one after another): wall time of the default run ÷ that one (target ≤ 0.65
   on 2 cores), and the CPU use of each (user + system time of every process ÷ wall time; target ≥ 1.70
   on 2 cores). One pair: each side is a whole run, one after the other on the same machine.

The clones use this checkout's `.venv`; the install that `make run` does on a fresh machine is not timed.

    python -m benchmarks.pipeline [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, machine

REPO = Path(__file__).resolve().parents[1]
RUN = ["sounding", "retrain"]
"""What `make run` runs (Makefile)."""
DONE = re.compile(r"Task run '[^']+' - (?P<stage>\S+): done in (?P<seconds>[\d.]+) s")
"""The flow's line for a stage that ran."""


def cpu_seconds() -> float:
    """User + system time of this process's finished children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(root: Path, env: dict[str, str]) -> tuple[float, dict[str, float], float]:
    """Run what `make run` runs in ``root``, echoing its output; return its wall time, each stage's own
    time and the CPU time it used (user + system, every process)."""
    cpu = cpu_seconds()
    start = time.perf_counter()
    stages: dict[str, float] = {}
    proc = subprocess.Popen(
        RUN, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        if done := DONE.search(line):
            stages[done["stage"]] = float(done["seconds"])
        print(line, end="", flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(RUN)} failed with exit code {proc.returncode}")
    return time.perf_counter() - start, stages, cpu_seconds() - cpu


def noop_once(root: Path, env: dict[str, str]) -> float:
    """Wall time of one `dvc repro` in ``root``, which must run no stage."""
    start = time.perf_counter()
    out = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    assert "Running stage" not in out.stdout, out.stdout
    return seconds


def one_stage_project(root: Path, env: dict[str, str]) -> Path:
    """A DVC project of one stage (one param, one output), run once: DVC's floor for a no-op."""
    (root / "params.yaml").write_text("a: 1\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  one:\n    cmd: echo 1 > out.txt\n    params: [a]\n    outs: [out.txt]\n"
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for args in (["init", "-q"], ["config", "core.analytics", "false"], ["repro", "-q"]):
        subprocess.run(["dvc", *args], cwd=root, env=env, check=True, capture_output=True)
    return root


def noop_seconds(root: Path, env: dict[str, str], times: int = 5) -> tuple[float, float]:
    """Medians of ``times`` no-op `dvc repro` in ``root`` and in a one-stage project, alternating, so that
    both see the same host: its speed drifts by as much as the stages cost (docs/benchmarks.md, figure 5)."""
    with tempfile.TemporaryDirectory() as tmp:
        floor_root = one_stage_project(Path(tmp), env)
        pairs = [(noop_once(root, env), noop_once(floor_root, env)) for _ in range(times)]
    return statistics.median(p for p, _ in pairs), statistics.median(f for _, f in pairs)


def serial_run(env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU time of `make run` in a fresh clone whose params say ``compute.workers: 1``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sounding"
        subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
        params = root / "params.yaml"
        text = params.read_text()
        assert "\n  workers: auto" in text, "params.yaml no longer sets compute.workers: auto"
        params.write_text(text.replace("\n  workers: auto", "\n  workers: 1", 1))
        total, _, cpu = timed_run(root, env)
    return total, cpu


def measure(keep: Path | None = None) -> list[Figure]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp) / "sounding"
        subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
        print(f"machine: {machine()}")
        total, stages, cpu = timed_run(root, env)
        noop, floor = noop_seconds(root, env)
        accuracy = {
            arch: json.loads((root / "metrics" / f"{arch}.json").read_text())["test_acc"]
            for arch in ("linear", "mlp", "cnn", "rnn")
        }
        studies = {
            arch: json.loads((root / "tuning" / arch / "best.json").read_text())
            for arch in ("linear", "mlp", "cnn", "rnn")
        }
    print("== the same run with compute.workers: 1", flush=True)
    serial, serial_cpu = serial_run(env)
    by_stage = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items())
    reached = ", ".join(f"{arch} {acc:.3f}" for arch, acc in accuracy.items())
    print(f"make run {total:.0f} s; stages: {by_stage}\ntest accuracy (mean of seeds): {reached}")
    print(
        f"no-op dvc repro {noop:.2f} s = {noop / total:.4f} of the full run; a one-stage project's {floor:.2f} s"
    )
    print(
        f"workers auto {total:.0f} s (CPU {cpu / total:.2f}) vs workers 1 {serial:.0f} s "
        f"(CPU {serial_cpu / serial:.2f}): ratio {total / serial:.3f}"
    )
    return [
        Figure(
            5,
            "no-op dvc repro ÷ full run",
            noop / total,
            "< 0.05",
            noop / total < 0.05,
            f"{noop:.2f} s vs {total:.0f} s",
        ),
        Figure(
            5,
            "no-op dvc repro, seconds",
            noop,
            "< 1 s",
            noop < 1,
            f"median of 5; a one-stage DVC project's: {floor:.2f} s",
        ),
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
            9,
            "make run wall time, compute.workers auto ÷ 1",
            total / serial,
            "≤ 0.65",
            total / serial <= 0.65,
            f"{total:.0f} s vs {serial:.0f} s, one pair, {os.cpu_count()} cores",
        ),
        Figure(
            9,
            "make run CPU use (user + system ÷ wall), compute.workers auto",
            cpu / total,
            "≥ 1.70",
            cpu / total >= 1.70,
            f"{cpu:.0f} s of CPU in {total:.0f} s; with workers 1: {serial_cpu / serial:.2f}",
        ),
        Figure(
            7,
            "a fresh clone's make run on the defaults, minutes",
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
