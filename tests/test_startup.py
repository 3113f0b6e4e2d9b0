"""Every Sounding process defers Python's full garbage-collection passes before its heavy imports."""

from __future__ import annotations

import ast
import gc
import subprocess
import sys

import pytest

from sounding import parallel
from sounding.startup import FULL_PASS_EVERY
from tests.conftest import tiny_params

FULL_PASSES = """
import gc
passes = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and passes.append(1))
{setup}
import lightning, mlflow, sounding.stages
print(len(passes))
"""
"""Counts the full passes made while a process imports what a training stage imports."""


def full_passes(setup: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FULL_PASSES.format(setup=setup)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_importing_what_a_stage_imports_makes_no_full_gc_pass_once_deferred() -> None:
    assert full_passes("") > 0  # CPython's defaults: passes over everything imported so far
    assert full_passes("from sounding.startup import defer_full_collections; defer_full_collections()") == 0


ENTRY_POINTS = {
    "the sounding command": (
        "import sys\nsys.argv = ['sounding', '--help']\nfrom sounding.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    ),
    "the MLflow writer": (  # stdin closed at once: it exits as it does when its parent ends
        "import io, runpy, sys\nsys.stdin = io.StringIO('')\n"
        "runpy.run_module('sounding.tracking_writer', run_name='__main__')"
    ),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_each_process_entry_point_defers_full_passes(entry: str) -> None:
    code = ENTRY_POINTS[entry] + "\nimport gc\nprint(gc.get_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    young, middle, full = ast.literal_eval(out.stdout.splitlines()[-1])
    assert (young, middle) == gc.get_threshold()[:2] and full == FULL_PASS_EVERY


def thresholds(_job: int) -> tuple[int, int, int]:
    return gc.get_threshold()


def test_a_spawned_worker_defers_full_passes() -> None:
    saved = gc.get_threshold()  # deferred already if this pytest worker ran a command in-process
    gc.set_threshold(700, 10, 10)  # CPython's defaults in the parent: the workers' setting is their own
    try:
        results = parallel.run_jobs(tiny_params(**{"compute.workers": 2}), thresholds, [0, 1])
    finally:
        gc.set_threshold(*saved)
    assert [full for _, _, full in results] == [FULL_PASS_EVERY, FULL_PASS_EVERY]
