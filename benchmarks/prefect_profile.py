"""Where the retraining flow's extra time goes (explains figure 6): one flow run on the benchmark's params,
with the library functions its tasks call timed from inside. Flow wall time minus their sum is Prefect's
cost, split into the cache-key computation (ours: hashing inputs) and the rest (task and flow run
bookkeeping through the API, result storage, threads).

    python -m benchmarks.prefect_profile
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from benchmarks.prefect_overhead import STATE, bench_params
from pipelines.server import prefect_server

TIMED = {
    "sounding.stages": ["prepare", "train_architecture"],
    "sounding.baselines": ["run_baselines"],
    "sounding.tuning": ["tune"],
    "sounding.transfer": ["pretrain", "run_transfer"],
    "sounding.registry": ["register_all"],
    "sounding.report": ["write_report"],
}


_depth = [0]
"""Timed calls in progress: only the outermost counts (``pretrain`` calls ``prepare`` and ``train``)."""


def _timed(totals: dict[str, float], name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        _depth[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[0] -= 1
            if not _depth[0]:
                totals[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    import importlib
    import shutil

    totals: dict[str, float] = defaultdict(float)
    for module_name, names in TIMED.items():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, _timed(totals, name, getattr(module, name)))
    import pipelines.retrain as retrain_module

    for stage in ("prepare", "tune", "train", "baselines", "pretrain", "transfer", "register", "report"):
        task = getattr(retrain_module, stage)
        task.cache_key_fn = _timed(totals, "cache key", task.cache_key_fn)
    params = bench_params(40)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with prefect_server(port, home=root / "prefect-home") as url:
            os.environ["PREFECT_API_URL"] = url
            from pipelines.retrain import retrain

            work = root / "flow"
            work.mkdir()
            (work / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
            cwd = Path.cwd()
            os.chdir(work)
            try:
                for _ in ("warm-up", "measured"):
                    for path in STATE:
                        shutil.rmtree(path, ignore_errors=True)
                    totals.clear()
                    start = time.perf_counter()
                    retrain("params.yaml", force=True)
                    wall = time.perf_counter() - start
            finally:
                os.chdir(cwd)
                os.environ.pop("PREFECT_API_URL")
    work_s = sum(v for k, v in totals.items() if k != "cache key")
    print(f"flow wall {wall:.2f} s; library functions {work_s:.2f} s; Prefect's share {wall - work_s:.2f} s")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:20} {seconds:7.3f} s")
    print(f"  {'other (API, results)':20} {wall - work_s - totals['cache key']:7.3f} s  (by difference)")


if __name__ == "__main__":
    main()
