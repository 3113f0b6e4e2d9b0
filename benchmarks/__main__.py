"""`make bench`: every benchmark in turn, then `benchmarks/results.md` (figure, ratio, target, verdict).

python -m benchmarks [--skip pipeline] [--only flops,threads]

A partial run (``--only``, ``--skip``) replaces the rows of the figures it measured and keeps the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import Figure, machine

SUITE = [
    "lightning_overhead",
    "flops",
    "pruning",
    "tracking_overhead",
    "prefect_overhead",
    "threads",
    "pipeline",
    "arch_cost",
    "startup",
]
"""Modules in the order of the figures they produce; each has ``measure() -> list[Figure]``."""


def kept_rows(out: Path, remeasured: set[tuple[int, str]]) -> list[str]:
    """Rows of an existing results table whose figures (number and name: one number can name rows of
    several benchmarks) were not measured again (for a partial run); each keeps the time of the run that
    measured it."""
    lines = out.read_text().splitlines() if out.is_file() else []
    rows = [line for line in lines if line.startswith("| ") and line[2:3].isdigit()]
    return [row for row in rows if (int(row.split("|")[1]), row.split("|")[2].strip()) not in remeasured]


def write_results(
    figures: list[Figure], started: str, out: Path, kept: list[str] = (), command: str = "make bench"
) -> str:
    rows = sorted([*(f.row(started) for f in figures), *kept], key=lambda row: int(row.split("|")[1]))
    how = f"by `{command}`"
    if kept:
        numbers = sorted({f.number for f in figures})
        which = ("figure " if len(numbers) == 1 else "figures ") + ", ".join(map(str, numbers))
        how = f"by `{command}` ({which}; the other rows from earlier runs)"
    lines = [
        "# Benchmark results",
        "",
        f"Latest run {started} {how} on: {machine()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}. Every ratio is the median over interleaved pairs measured in one run; "
        "each row says when its run started.",
        "",
        "| # | figure | measured | target | verdict | run (UTC) | detail |",
        "|---:|---|---:|---|---|---|---|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated modules to leave out")
    parser.add_argument("--only", default="", help="comma-separated modules to run")
    args = parser.parse_args()
    chosen = [
        m for m in SUITE if (not args.only or m in args.only.split(",")) and m not in args.skip.split(",")
    ]
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    figures: list[Figure] = []
    for name in chosen:
        if importlib.util.find_spec(f"benchmarks.{name}") is None:
            print(f"== {name}: not present, skipped")
            continue
        print(f"== {name}", flush=True)
        figures += importlib.import_module(f"benchmarks.{name}").measure()
    out = Path(__file__).parent / "results.md"
    partial = chosen != SUITE
    kept = kept_rows(out, {(f.number, f.name) for f in figures}) if partial else []
    command = " ".join(["python -m benchmarks", *sys.argv[1:]]) if partial else "make bench"
    print(write_results(figures, started, out, kept, command))
    print(f"written to {out} (load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
