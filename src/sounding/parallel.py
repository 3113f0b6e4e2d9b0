"""Independent jobs side by side: one process per core (or per GPU), one torch thread each.

The seeds of ``sounding train``, the fits of the transfer study and the configurations of the depth
study are independent and deterministic: each depends on its own seed only, so running them in
``compute.workers`` processes gives the results of a serial run, sooner. Small networks do not scale
with torch threads (one thread beat two for every architecture here: docs/benchmarks.md), so a core
per process is the way to use a machine.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from sounding.config import Params
from sounding.startup import defer_full_collections

Job = TypeVar("Job")
Result = TypeVar("Result")


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (a SLURM allocation or ``taskset``, not the host's)
    where the platform has one (Linux), else every core (macOS and Windows have no ``sched_getaffinity``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_gpus(params: Params, workers: int) -> list[str | None]:
    """The GPU each local worker sees (its ``CUDA_VISIBLE_DEVICES``): the GPUs visible to this process
    dealt round-robin, so N workers on a machine with G GPUs use all of them, N // G or more per GPU.
    ``None`` (inherit) when training runs on the CPU or there is no GPU."""
    gpus = visible_gpus(params)
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def visible_gpus(params: Params) -> list[str]:
    """The GPUs training may use: none with ``accelerator: cpu``."""
    if params.compute.accelerator == "cpu":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # NVML: no CUDA context in this process


def n_workers(params: Params, jobs: int) -> int:
    """Processes for ``jobs`` independent jobs: ``compute.workers`` (``auto``: one per GPU when training
    runs on GPUs, else one per core), never more than the jobs."""
    workers = params.compute.workers
    if workers == "auto":
        workers = len(visible_gpus(params)) or available_cores()
    return max(1, min(workers, jobs))


class Stopped(RuntimeError):
    """A job not started because the run was stopped (another job failed, or an interrupt)."""


_stop: Any = None  # the pool's stop event, in a worker process
_busy = False  # whether this worker is running a job


def _init_worker(gpus: Any, stop: Any, threads: int, tags: dict[str, str]) -> None:
    """A worker process: its GPU, its thread count, the context tags of its parent (its MLflow runs
    belong to the same Prefect flow run and wait for the same publication), and interrupts that stop a
    running job only.

    SIGTERM (from ``run_jobs``) and SIGINT (Ctrl-C reaches the whole process group) raise
    KeyboardInterrupt inside a running job, whose MLflow run then ends KILLED; an idle worker ignores
    them and is shut down by the pool (an interrupt in the pool's own loop would break the pool, which
    then kills every worker, mid-cleanup)."""
    defer_full_collections()  # before torch and the jobs' imports: sounding.startup
    global _stop
    _stop = stop
    if gpus is not None:
        gpu = gpus.get()
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    from sounding import tracking

    tracking.inherit_context_tags(tags)
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    if _busy:
        raise KeyboardInterrupt(f"signal {signum}")


def _call(fn: Callable[[Job], Result], job: Job) -> Result:
    """``fn(job)`` in a worker, unless the run has been stopped. What the job handed to this process's
    MLflow writer is stored before its result is returned: the pool may end the process (and its writer)
    as soon as the last result is in."""
    global _busy
    from sounding import tracking

    if _stop.is_set():
        raise Stopped("not started: the run was stopped")
    _busy = True
    try:
        result = fn(job)
        tracking.wait_sent()
        return result
    finally:
        _busy = False


def run_jobs(
    params: Params,
    fn: Callable[[Job], Result],
    jobs: Sequence[Job],
    on_done: Callable[[Result], None] | None = None,
) -> list[Result]:
    """``[fn(job) for job in jobs]``, in ``n_workers`` spawned processes when that is more than one
    (``Workers.run``)."""
    with Workers(params, len(jobs)) as workers:
        return workers.run(fn, jobs, on_done)


class Workers:
    """``n_workers(params, jobs)`` spawned processes, kept for several ``run`` calls (a study's batches
    start no new processes); with one, jobs run in this process."""

    def __init__(self, params: Params, jobs: int) -> None:
        self.params, self.size = params, n_workers(params, jobs)
        self._pool: ProcessPoolExecutor | None = None
        self._stop: Any = None

    def __enter__(self) -> Workers:
        from sounding import tracking

        if self.size > 1:
            # spawn, not fork: a forked copy of a process that has used torch's thread pools or opened
            # database connections inherits them in an undefined state.
            ctx = multiprocessing.get_context("spawn")
            gpus, self._stop = ctx.Queue(), ctx.Event()
            for gpu in worker_gpus(self.params, self.size):
                gpus.put(gpu)
            self._pool = ProcessPoolExecutor(
                self.size,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(gpus, self._stop, self.params.compute.threads, tracking.context_tags()),
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run(
        self,
        fn: Callable[[Job], Result],
        jobs: Sequence[Job],
        on_done: Callable[[Result], None] | None = None,
    ) -> list[Result]:
        """``[fn(job) for job in jobs]``. ``fn`` must be a module-level function and the jobs and results
        picklable (paths, strings, numbers). ``on_done`` is called in this process with each result as it
        arrives (a progress bar). The first job to fail stops the jobs not started yet, waits for those
        running (their runs end as they would in a serial run) and raises its exception here. An interrupt
        of this process (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the CLI) interrupts the
        running jobs too (SIGTERM, which a worker turns into KeyboardInterrupt: their MLflow runs end
        KILLED, their checkpoints stay for a rerun)."""
        if self._pool is None:
            results = []
            for job in jobs:
                results.append(fn(job))
                if on_done is not None:
                    on_done(results[-1])
            return results
        futures: list[Future] = [self._pool.submit(_call, fn, job) for job in jobs]
        try:
            pending = set(futures)
            while pending:  # each result as it comes (FIRST_EXCEPTION would wait for all but a failure)
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:
                        self._stop.set()  # jobs not started yet do not start; those running finish
                        raise future.exception()
                    if on_done is not None:
                        on_done(future.result())
            return [f.result() for f in futures]
        except (KeyboardInterrupt, SystemExit):
            self._stop.set()
            for proc in list(getattr(self._pool, "_processes", {}).values()):  # no public list
                if proc.is_alive():
                    proc.terminate()  # SIGTERM: a running job ends like Ctrl-C (``_init_worker``)
            raise
