"""Jobs side by side: each result reaches the caller as it arrives, not once every job has ended."""

from __future__ import annotations

import time
from pathlib import Path

from sounding import parallel
from tests.conftest import tiny_params


def wait_for_marker(job: tuple[str, str]) -> str:
    """The slow job ends only once the caller has received the fast job's result (it writes the marker)."""
    name, marker = job
    if name == "fast":
        return "fast"
    deadline = time.monotonic() + 60
    while not Path(marker).exists():
        if time.monotonic() > deadline:
            return "slow: the fast job's result never reached the caller while this job ran"
        time.sleep(0.01)
    return "slow: after the fast job's result"


def test_each_result_reaches_the_caller_as_its_job_ends(tmp_path: Path) -> None:
    marker = tmp_path / "fast-done"
    arrived = []

    def on_done(result: str) -> None:
        arrived.append(result)
        if result == "fast":
            marker.touch()

    jobs = [("slow", str(marker)), ("fast", str(marker))]
    results = parallel.run_jobs(tiny_params(**{"compute.workers": 2}), wait_for_marker, jobs, on_done)
    assert results == ["slow: after the fast job's result", "fast"]  # in the jobs' order
    assert arrived == ["fast", "slow: after the fast job's result"]  # in the order they ended


def test_auto_workers_count_the_cpu_affinity_or_every_core_where_there_is_none(monkeypatch) -> None:
    params = tiny_params(**{"compute.workers": "auto", "compute.accelerator": "cpu"})
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    assert parallel.n_workers(params, 100) == 3  # a taskset or SLURM allocation, not the host's 8
    monkeypatch.delattr(parallel.os, "sched_getaffinity")  # macOS, Windows
    assert parallel.n_workers(params, 100) == 8
    assert parallel.n_workers(params, 2) == 2  # never more than the jobs
