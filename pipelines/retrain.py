"""Scheduled retraining with Prefect: the DVC pipeline's stages as cached, retried, parallel tasks.

``retrain(params_path)`` chains prepare → (tune → train) per architecture and the classical baselines →
pretrain → transfer → register → report. Each task calls the library function its ``sounding`` command
calls, with the paths of ``dvc.yaml``, so Prefect and DVC write the same files in the same workspace (the
current folder).

A task's cache key is a content fingerprint: the params keys that ``dvc.yaml`` lists for its stage, a hash
of the package source, the content hashes of the upstream results it reads (the data sha256, the tuned
values, the metrics) and the workspace. A run with nothing changed therefore trains nothing, and changing
one architecture's params retrains that architecture (and the stages that read its results) only. A stage
whose outputs are missing runs whatever its key. Cached results are small JSON records under ``.sounding/prefect``, never pickles.
"""

from __future__ import annotations

import sounding  # noqa: F401  (first: importing it turns telemetry off before prefect's import reads it)

# isort: split
import fcntl
import functools
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import yaml
from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.serializers import JSONSerializer
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from sounding.config import ARCHS, DataParams, Params, load_params
from sounding.errors import BadInput, TrainingDiverged
from sounding.files import sha256_file

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"
STATE_DIR = Path(".sounding")
"""Workspace folder of the flow's own state: the lock and the cached task results (git-ignored)."""
RESULTS = JSONSerializer(object_encoder=None, object_decoder=None)
"""Task results are plain JSON: reading a cached result never imports or unpickles anything."""
FINAL = (BadInput, TrainingDiverged)
"""Failures that a retry would only repeat: the user's input, or a deterministic divergence."""


@functools.cache
def _dvc_stages() -> dict[str, Any]:
    # Parsed once per process: at 10 ms a parse, it was the larger part of a task's cache-key cost.
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def stage_params(stage: str, arch: str = "") -> list[str]:
    """The params keys ``dvc.yaml`` lists for ``stage`` (``${item}`` = ``arch``): a task's cache key covers
    exactly what DVC tracks for the same stage."""
    spec = _dvc_stages()[stage]
    return [key.replace("${item}", arch) for key in spec.get("do", spec)["params"]]


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _files_digest(paths: list[str]) -> str:
    return _digest({p: sha256_file(p) for p in paths if Path(p).is_file()})


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The stage, its params, the code version, the content of the files it reads, and the workspace."""
    from sounding.training import code_version

    params: Params = parameters["params"]
    stage, arch = parameters["stage"], parameters["arch"]
    return _digest(
        {
            "stage": stage,
            "arch": arch,
            "params": params.section_hash(*stage_params(stage, arch)),
            "code": code_version(),
            "inputs": _files_digest(parameters["inputs"]),
            "workspace": str(Path.cwd().resolve()),
        }
    )


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry anything but bad input and divergence: those fail at once, with their message."""
    return not isinstance(state.result(raise_on_failure=False), FINAL)


def _run_name() -> str:
    """``train-cnn``, ``prepare``: the DVC stage name (``stage@arch`` there)."""
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p['stage']}-{p['arch']}" if p["arch"] else p["stage"]


stage_task = task(
    cache_key_fn=_cache_key,
    retry_condition_fn=_retry_transient,
    result_serializer=RESULTS,
    task_run_name=_run_name,
)
"""Every stage's task options. ``inputs`` are the files a stage reads (their content is in the cache key),
``outputs`` those it writes, as in dvc.yaml. ``_configured`` adds retries, storage and cache refresh."""


@stage_task
def prepare(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding prepare --out data/prepared``."""
    from sounding import stages

    return {"data": outputs[0], "sha256": stages.prepare(params, outputs[0])["sha256"]}


@stage_task
def tune(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding tune ARCH --data data/prepared --out tuning/ARCH``."""
    from sounding.tuning import tune as run_tuning

    summary = run_tuning(params, arch, "data/prepared", Path(outputs[0]).parent, progress=False)
    return {"best": outputs[0], "overrides": summary["overrides"]}


@stage_task
def train(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding train ARCH --data data/prepared --tuned tuning/ARCH/best.json --model-dir models/ARCH
    --metrics metrics/ARCH.json --plots plots/ARCH``."""
    from sounding import stages

    metrics, model_dir, plots_dir = outputs
    tuned = f"tuning/{arch}/best.json"
    m = stages.train_architecture(
        params, arch, "data/prepared", model_dir, metrics, plots_dir, progress=False, tuned=tuned
    )
    return {"metrics": metrics, "test_acc": m["test_acc"], "run_ids": [s["run_id"] for s in m["seeds"]]}


@stage_task
def baselines(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding baselines --data data/prepared --metrics metrics/baselines.json``."""
    from sounding.baselines import run_baselines

    summary = run_baselines(params, "data/prepared", outputs[0])
    return {"metrics": outputs[0], "test_acc": {k: b["test_acc"] for k, b in summary["baselines"].items()}}


@stage_task
def pretrain(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding pretrain --data data/pretrain --model-dir models/pretrained --metrics metrics/pretrain
    --plots plots/pretrain``."""
    from sounding.transfer import pretrain as run_pretrain

    results = run_pretrain(
        params, "data/pretrain", "models/pretrained", "metrics/pretrain", "plots/pretrain", progress=False
    )
    return {"run_ids": {a: m["seeds"][0]["run_id"] for a, m in results.items()}}


@stage_task
def transfer(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding transfer --data data/prepared --pretrained models/pretrained --metrics
    metrics/transfer.json --plots plots/transfer``."""
    from sounding.transfer import run_transfer

    run_transfer(params, "data/prepared", "models/pretrained", outputs[0], outputs[1], progress=False)
    return {"metrics": outputs[0]}


@stage_task
def register(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding register --metrics metrics --data data/prepared --out reports/promotion.json``."""
    from sounding.registry import register_all

    decisions = register_all(params, "metrics", "data/prepared", outputs[0])["decisions"]
    return {"decisions": [{k: d[k] for k in ("model", "version", "decision")} for d in decisions]}


@stage_task
def report(params: Params, stage: str, arch: str, inputs: list[str], outputs: list[str]) -> dict:
    """``sounding report --metrics metrics --out reports``."""
    from sounding.report import write_report

    return {"leaderboard": str(write_report("metrics", params.train.archs, params.data.source, "reports"))}


def _configured(stage_fn: Any, params: Params, force: bool, outputs: list[str]) -> Any:
    """The task with the retry policy of params and the workspace's result store. It ignores its cached
    result with ``force``, and while one of its outputs is missing: a deleted model is trained again, not
    restored from a record saying it exists (only this stage writes them, so checking before it starts
    is enough)."""
    r = params.retrain
    return stage_fn.with_options(
        retries=r.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=r.retry_delay_s) if r.retries else 0,
        result_storage=(STATE_DIR / "prefect").resolve(),
        refresh_cache=force or not all(Path(p).exists() for p in outputs),
    )


def task_runner(params: Params) -> ProcessPoolTaskRunner | ThreadPoolTaskRunner:
    """The runner ``retrain.task_runner`` names, with ``retrain.max_workers`` workers."""
    runner = {"processes": ProcessPoolTaskRunner, "threads": ThreadPoolTaskRunner}[params.retrain.task_runner]
    return runner(max_workers=params.retrain.max_workers)


@contextmanager
def workspace_lock(logger: Any, path: Path = STATE_DIR / "retrain.lock") -> Iterator[None]:
    """Hold the workspace for one retraining; a second one waits here until the first ends. The lock is
    the kernel's (flock): it ends with its process, so a killed run never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another retraining holds %s; waiting for it to finish", path.resolve())
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(params_path: str | Path, archs: list[str] | None = None) -> Params:
    """Params of a retraining, restricted to ``archs`` when given. Raises ``BadInput`` before any work."""
    params = load_params(params_path)
    if archs is not None:
        unknown = sorted(set(archs) - set(ARCHS))
        if unknown or not archs:
            raise BadInput(f"unknown architecture(s) {unknown or archs}; allowed: {', '.join(ARCHS)}")
        params = params.with_overrides({"train.archs": list(dict.fromkeys(archs))})
    return params


@flow(name="retrain")
def retrain(params_path: str = "params.yaml", archs: list[str] | None = None, force: bool = False) -> dict:
    """Retrain what changed in the current folder's workspace: prepare, (tune → train) per architecture and
    the classical baselines in parallel, pretrain → transfer, register through the promotion gate, report.
    ``force`` ignores every cached result.

    Returns each stage's final state (``Cached`` when nothing it depends on changed). A failed stage fails
    the flow once every stage that does not depend on it has finished; their results stay cached.
    """
    params = load(params_path, archs)
    logger = get_run_logger()
    with workspace_lock(logger):
        futures = _submit_stages(params, force)
    failed = {name: f.state.message for name, f in futures.items() if f.state.is_failed()}
    for name, message in failed.items():
        logger.error("%s failed: %s", name, message)
    for future in futures.values():
        if future.state.is_failed():
            future.result()  # raises the stage's own exception (BadInput stays BadInput)
    return {name: f.state.name for name, f in futures.items()}


def raw_inputs(data: DataParams) -> list[str]:
    """The user's files that ``prepare`` reads for ``data.source`` (none for generated or bundled data)."""
    if data.source in ("mnist1d", "digits"):
        return []
    with_test = data.source in ("ts", "table") and data.test_path is not None
    return [data.path, data.test_path] if with_test else [data.path]


def _submit_stages(params: Params, force: bool) -> dict[str, Any]:
    """Submit every stage in dependency order (so a thread waiting on its upstream never starves it) and
    wait for all of them."""
    futures: dict[str, Any] = {}
    data = "data/prepared/manifest.json"

    def submit(stage_fn: Any, arch: str, inputs: list[str], outputs: list[str], after: list) -> Any:
        stage = stage_fn.name
        parameters = {"params": params, "stage": stage, "arch": arch, "inputs": inputs, "outputs": outputs}
        future = runner.submit(_configured(stage_fn, params, force, outputs), parameters, wait_for=after)
        futures[f"{stage}-{arch}" if arch else stage] = future
        return future

    with task_runner(params) as runner:
        prepared = submit(prepare, "", raw_inputs(params.data), ["data/prepared"], [])
        archs = params.train.archs
        tuned = {a: submit(tune, a, [data], [f"tuning/{a}/best.json"], [prepared]) for a in archs}
        trained = [
            submit(
                train,
                a,
                [data, f"tuning/{a}/best.json"],
                [f"metrics/{a}.json", f"models/{a}", f"plots/{a}"],
                [tuned[a]],
            )
            for a in archs
        ]
        classical = submit(baselines, "", [data], ["metrics/baselines.json"], [prepared])
        pretrained, backbones = [], []
        if params.transfer.source == "pretrain":
            backbones = [f"models/pretrained/{a}/model.safetensors" for a in params.transfer.archs]
            pretrained = [submit(pretrain, "", [], backbones, [])]
        transferred = submit(
            transfer,
            "",
            [data, *backbones],
            ["metrics/transfer.json", "plots/transfer"],
            [prepared, *pretrained],
        )
        metrics = [f"metrics/{a}.json" for a in archs]
        registered = submit(register, "", [data, *metrics], ["reports/promotion.json"], trained)
        extra = ["metrics/baselines.json", "metrics/transfer.json", "metrics/gan.json", "metrics/depth.json"]
        submit(
            report, "", [*metrics, *extra], ["reports/leaderboard.md"], [registered, transferred, classical]
        )
        wait(list(futures.values()))
    return futures


# Served or deployed flows are loaded from this file under a name worker processes cannot import:
# pickle its functions by value, so process-pool workers need only the installed `sounding` package.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
