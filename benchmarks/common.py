"""Shared helpers for the side-by-side benchmarks: interleaved pairs, medians, machine description.

Every figure is a ratio of two things measured alternately in one process, so that the noise of a shared
machine hits both sides alike. Absolute times are printed for context only.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}; {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; load average {load}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    a: Callable[[], object],
    b: Callable[[], object],
    pairs: int,
    min_seconds: float = 0.0,
    warm_up: bool = True,
) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately, ``pairs`` times each (after one untimed warm-up of each, unless
    not ``warm_up``: runs of whole pipelines, minutes each, have nothing to warm), or as many more pairs
    (up to 15) as fill ``min_seconds``: on a shared machine, the median of 3 pairs of sub-second runs
    moved by ±5% from one run to the next."""
    if warm_up:
        pairs = max(pairs, min(15, math.ceil(min_seconds / (timed(a) + timed(b)))))
    times_a, times_b = [], []
    for i in range(pairs):
        first, second = (a, b) if i % 2 == 0 else (b, a)  # alternate the order too
        t1, t2 = timed(first), timed(second)
        ta, tb = (t1, t2) if i % 2 == 0 else (t2, t1)
        times_a.append(ta)
        times_b.append(tb)
    return times_a, times_b


def ratio(times_a: list[float], times_b: list[float]) -> float:
    """Median of the per-pair ratios a/b."""
    return statistics.median(x / y for x, y in zip(times_a, times_b, strict=True))


@dataclass
class Figure:
    """One row of ``benchmarks/results.md``: a measured figure against its target."""

    number: int
    name: str
    value: float | None
    target: str
    passed: bool | None
    detail: str = ""

    def row(self, when: str) -> str:
        """The table row, stamped with ``when`` the run that measured it started."""
        verdict = {True: "pass", False: "falls short", None: "–"}[self.passed]
        value = "–" if self.value is None else f"{self.value:.3g}"
        return (
            f"| {self.number} | {self.name} | {value} | {self.target} | {verdict} | {when} | {self.detail} |"
        )


def prepared_default_data(workdir: Path):
    """The default MNIST-1D, prepared under ``workdir``: what the benchmarks train on."""
    from sounding.config import Params
    from sounding.data.prepare import load_prepared, prepare

    params = Params()
    prepare(params.data, params.seed, workdir / "data")
    return load_prepared(workdir / "data")
