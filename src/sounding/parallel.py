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
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from sounding.config import Params

Job = TypeVar("Job")
Result = TypeVar("Result")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: a SLURM allocation or ``taskset``, not the host's)."""
    return len(os.sched_getaffinity(0))


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


def _init_worker(gpus: Any, threads: int) -> None:
    """A worker process: its GPU, its thread count, and SIGTERM ending a job like Ctrl-C (its MLflow run
    then ends KILLED, as in the parent)."""
    if gpus is not None:
        gpu = gpus.get()
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_jobs(
    params: Params,
    fn: Callable[[Job], Result],
    jobs: Sequence[Job],
    on_done: Callable[[Result], None] | None = None,
) -> list[Result]:
    """``[fn(job) for job in jobs]``, in ``n_workers`` spawned processes when that is more than one.

    ``fn`` must be a module-level function and the jobs and results picklable (paths, strings, numbers).
    ``on_done`` is called in this process with each result as it arrives (a progress bar). The first job
    to fail cancels those not started, interrupts the running ones (SIGTERM, which a worker turns into
    KeyboardInterrupt: their MLflow runs end KILLED, their checkpoints stay for a rerun) and raises its
    exception here; so does an interrupt of this process (Ctrl-C, or SIGTERM turned into
    KeyboardInterrupt by the CLI).
    """
    workers = n_workers(params, len(jobs))
    if workers == 1:
        results = []
        for job in jobs:
            results.append(fn(job))
            if on_done is not None:
                on_done(results[-1])
        return results
    # spawn, not fork: a forked copy of a process that has used torch's thread pools or opened database
    # connections inherits them in an undefined state.
    ctx = multiprocessing.get_context("spawn")
    gpus = ctx.Queue()
    for gpu in worker_gpus(params, workers):
        gpus.put(gpu)
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(gpus, params.compute.threads)
    )
    futures: list[Future] = [pool.submit(fn, job) for job in jobs]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
                if on_done is not None:
                    on_done(future.result())
        return [f.result() for f in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        for proc in list(getattr(pool, "_processes", {}).values()):  # the executor keeps no public list
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the job ends like Ctrl-C (``_init_worker``)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
