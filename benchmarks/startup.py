"""Figure 11: a stage process's imports with full GC passes deferred (``sounding.startup``) ÷ with
Python's defaults.

Each side is a new Python process that imports what a training stage imports (torch, Lightning, MLflow,
``sounding.stages``), timed from its start to its exit, the two interleaved (``common.interleaved``).

    python -m benchmarks.startup [--pairs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from benchmarks.common import Figure, interleaved, machine, ratio

IMPORTS = "import lightning, mlflow, sounding.stages"
DEFERRED = "from sounding.startup import defer_full_collections; defer_full_collections(); "
TARGET = 0.90


def process(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def measure(pairs: int = 5) -> list[Figure]:
    print(f"machine: {machine()}")
    deferred, default = interleaved(lambda: process(DEFERRED + IMPORTS), lambda: process(IMPORTS), pairs)
    value = ratio(deferred, default)
    detail = (
        f"{statistics.median(deferred):.2f} s vs {statistics.median(default):.2f} s "
        f"({IMPORTS}), {len(deferred)} pairs"
    )
    print(f"deferred ÷ default: {value:.3f}; {detail}")
    name = "a stage process's imports, full GC passes deferred ÷ Python's defaults"
    return [Figure(11, name, value, f"≤ {TARGET}", value <= TARGET, detail)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    measure(parser.parse_args().pairs)


if __name__ == "__main__":
    main()
