"""What every Sounding process does first: Python's full garbage-collection passes, deferred.

A Sounding process (a stage's command, a worker of ``sounding.parallel``, the MLflow writer) starts by
importing torch, Lightning or MLflow: about half a million objects that live as long as the process. With
CPython's default thresholds (700, 10, 10) the cyclic collector makes a full pass over every tracked
object each time ten collections of the middle generation have passed and the heap has grown by a
quarter: seven full passes over an ever larger heap while a training stage imports, a sixth of its
import time (docs/benchmarks.md, figure 11). The young generations are collected as often as before, so
short-lived cycles go as soon and memory stays where it was; only full passes wait for
``FULL_PASS_EVERY`` middle-generation collections, which a stage's imports do not reach.
"""

from __future__ import annotations

import gc

FULL_PASS_EVERY = 1000
"""Middle-generation collections between two full passes (CPython's default: 10). Importing what a
training stage imports takes about 110; 1000 leaves room for the libraries to grow."""


def defer_full_collections() -> None:
    """Keep this process's young-generation thresholds; full passes wait for ``FULL_PASS_EVERY``."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_PASS_EVERY)
