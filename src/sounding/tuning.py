"""``sounding tune ARCH``: Optuna search over dropout, L2 and gradient clipping, pruned, resumable, parallel.

One study per architecture, data and search configuration, in an RDB storage (a sqlite file by default,
PostgreSQL for ``sounding tune`` on several machines). Each trial is the same ``training.fit`` as ``sounding
train`` (with its tuning epochs and without the test set), fed to Optuna's Lightning pruning callback epoch
by epoch (``PyTorchLightningPruningCallback``), and tracked as a nested MLflow run under one parent run per
study. On a validation part too small to rank trials (under ``train.min_val`` samples) a trial is judged by
k-fold cross-validation on the training and validation parts pooled instead (``tune.folds``), unpruned.

Trials run in batches of ``tune.batch`` through Optuna's ask-and-tell interface, side by side in
``compute.workers`` processes, with results that do not depend on the number of processes (``run_study``).
Exact trial budget with several ``sounding tune`` processes on one study: each counts complete + pruned +
running trials under a lock (a file lock for sqlite, an advisory lock for PostgreSQL) held until its new
trials are RUNNING in the storage. Dead processes: the asking process sends its trials' heartbeats; a trial
silent for ``tune.grace_s`` is marked FAIL and ``RetryHeartbeatStaleTrialCallback`` queues a copy with the same
params, whose checkpoint folder (named from those params) lets it resume where the dead one stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import statistics
import time
import warnings
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sounding import parallel
from sounding import progress as progress_
from sounding.config import RESULT_COMPUTE, Params, Range, TrainParams
from sounding.data.prepare import Prepared, Split
from sounding.errors import BadInput
from sounding.files import write_json

COUNTED = ("COMPLETE", "PRUNED", "RUNNING")
"""Trial states that use up the budget: failed trials are retried instead."""


def study_name(params: Params, arch: str, data_sha256: str) -> str:
    """``ARCH-<data sha256>-<search hash>``: a change of data or of what a trial means starts a new study."""
    search = params.section_hash(
        f"models.{arch}",
        *(f"train.{key}" for key in sorted(TrainParams.model_fields) if key not in ("archs", "n_seeds")),
        "tune.pruner",
        "tune.warmup_epochs",
        "tune.startup_trials",
        "tune.baseline",
        "tune.batch",
        "tune.space",
        *RESULT_COMPUTE,
        "seed",
    )
    search = hashlib.sha256(f"{search}-{params.tune_epochs(arch)}".encode()).hexdigest()
    return f"{arch}-{data_sha256[:12]}-{search[:8]}"


def storage_url(params: Params, tuning_root: str | Path = "tuning", resolve: bool = True) -> str:
    """The study storage: ``tune.storage``, else ``tuning/optuna.db`` as a sqlite URL: absolute to open
    it, or (``resolve=False``) the path as given, for files that must not name the machine's folders."""
    default = Path(tuning_root) / "optuna.db"
    return params.tune.storage or f"sqlite:///{default.resolve() if resolve else default}"


def public_url(url: str) -> str:
    """``url`` with any password masked, for files and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def search_space(params: Params, arch: str) -> dict[str, tuple[str, Range]]:
    """Optuna parameter name → (dotted params key it sets, range), for this architecture."""
    space = params.tune.space
    model_keys = getattr(params.models, arch).model_fields
    ranges: dict[str, tuple[str, Range]] = {}
    if space.dropout is not None and "dropout" in model_keys:
        ranges["dropout"] = (f"models.{arch}.dropout", space.dropout)
    for name in ("weight_decay", "gradient_clip_val", "lr"):
        if getattr(space, name) is not None:
            ranges[name] = (f"train.{name}", getattr(space, name))
    for key, r in space.extras.get(arch, {}).items():
        ranges[key] = (f"models.{arch}.{key}", r)
    return ranges


def _current(params: Params, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return node


def trial_params(params: Params, arch: str, overrides: dict[str, Any]) -> Params:
    """The params one trial of ``arch`` trains with: the overrides, its tuning epochs, one seed, and
    ``train.min_steps`` cut in the proportion of its epochs to ``train.epochs``."""
    epochs = params.tune_epochs(arch)
    min_steps = params.train.min_steps * epochs // params.train.epochs
    return params.with_overrides(
        {**overrides, "train.epochs": epochs, "train.min_steps": min_steps, "train.n_seeds": 1}
    )


def experiment(params: Params) -> str:
    """Tuning runs live beside, not among, the training runs: ``<tracking.experiment>-tuning``."""
    return f"{params.tracking.experiment}-tuning"


def _make_storage(params: Params, url: str):
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    t = params.tune
    engine = (
        {"connect_args": {"timeout": 60}}
        if url.startswith("sqlite")
        else {
            "pool_pre_ping": True,
            "connect_args": {"connect_timeout": max(1, round(params.tracking.timeout_s))},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat and retry callback are flagged experimental
        storage = RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=t.heartbeat_s,
            grace_period=t.grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=t.max_retry),
        )
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage


def _fast_sqlite(engine: Any) -> None:
    """Write-ahead log and ``synchronous=NORMAL``: a trial's dozens of small writes (params, intermediate
    values, heartbeats) each cost a commit; in the default rollback-journal mode every commit is several
    fsyncs. WAL is safe for processes on one machine (not on a network file system) and survives a crash
    of the process; at worst the last commits before a power loss are lost."""
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while creating the schema reconnect with the pragmas


class _NoTracebackOnCtrlC(logging.Filter):
    """Optuna logs a trial ended by Ctrl-C as a failure with its traceback: one line says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is KeyboardInterrupt:
            record.exc_info, record.exc_text = None, None
        return True


class _InterruptGate:
    """Ctrl-C (and the CLI's SIGTERM) interrupt a trial's objective at once, but Optuna's own bookkeeping
    (``ask``, ``tell``, storage commits) only when it is done. Optuna does not survive a KeyboardInterrupt
    raised inside ``tell``: the trial stays RUNNING and ``_run_trial`` itself fails with UnboundLocalError
    (optuna 4). A signal that arrives outside the objective is held and raised when the objective starts
    (the trial then ends FAIL, as any interrupted trial) or when the gate closes. Signals reach only the
    main thread, so elsewhere the gate does nothing."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._open = False
        self._held: tuple[int, Any] | None = None

    def __enter__(self) -> _InterruptGate:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(sig)
                if callable(handler):  # a Python handler that raises; SIG_DFL / SIG_IGN are left alone
                    self._previous[sig] = handler
                    signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._held is not None and exc_type is None:
            self.raise_held()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._open:
            self._previous[signum](signum, frame)
        else:
            self._held = (signum, frame)

    def raise_held(self) -> None:
        """Deliver a signal held since the objective last ran, if any."""
        if self._held is not None:
            (signum, frame), self._held = self._held, None
            self._previous[signum](signum, frame)

    def interruptible(self, func: Any) -> Any:
        """``func``, interruptible while it runs."""

        def gated(*args: Any, **kwargs: Any) -> Any:
            self._open = True
            try:
                self.raise_held()
                return func(*args, **kwargs)
            finally:
                self._open = False

        return gated


def _quiet_optuna() -> None:
    """Optuna's warnings and errors only, and no traceback for an interrupted trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoTracebackOnCtrlC) for f in handler.filters):
            handler.addFilter(_NoTracebackOnCtrlC())


def _make_pruner(params: Params, arch: str):
    import optuna

    t = params.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(t.warmup_epochs, 1), max_resource=params.tune_epochs(arch)
        )
    return optuna.pruners.NopPruner()


def _make_sampler(params: Params):
    import optuna

    seed = params.seed + _launcher_rank()
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=params.tune.startup_trials)


class BudgetLock:
    """Serialises work across the worker processes of one storage: an advisory lock on PostgreSQL, a file
    lock beside the sqlite database. Named for its first use, a study's "count the trials, then start one"
    (held from the count until the new trial is RUNNING); the same lock, under the study's name, makes one
    worker confirm its best (``confirmed``), and under ``SHARED`` guards what all studies of a storage
    share."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self._held = url, name, False
        self.key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
        self._conn = self._file = None

    def acquire(self) -> None:
        if self.url.startswith("sqlite"):
            import fcntl

            from sqlalchemy.engine import make_url

            path = Path(f"{make_url(self.url).database}.{self.name}.lock")
            self._file = open(path, "a+")  # noqa: SIM115 (kept open while held)
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            import sqlalchemy

            if self._conn is None:
                self._conn = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool).connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        else:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SHARED = "shared"
"""The lock of a whole storage: creating its schema and a study, and writing a study's parent MLflow run."""


@dataclass(frozen=True)
class TrialJob:
    """One trial of a batch, as a worker process runs it (picklable: paths and strings, no tensors)."""

    params_json: str
    arch: str
    data_dir: str
    out_dir: str
    storage: str
    study: str
    parent_run_id: str | None
    trial_id: int

    @property
    def params(self) -> Params:
        return Params.model_validate_json(self.params_json)


class _BatchView:
    """The study's storage as one trial of a batch sees it: trials that have not finished (its batch's
    siblings, another machine's trials) are hidden. The pruner then judges the trial against the trials
    finished before its batch started, whichever sibling reaches an epoch first, so a batch run in two
    processes gives the study of a batch run in one. Everything else, writes included, goes through."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if t.state.is_finished() or t._trial_id == self._trial_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


_storages: dict[str, Any] = {}  # a worker process's storage per URL, kept across the trials it runs


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Train one asked trial with Optuna's Lightning pruning callback, in its own nested MLflow run, and
    return its outcome (``number``, ``state``: COMPLETE, PRUNED or FAIL, ``value``) for the process that
    asked it to tell. An exception of the trial is its FAIL, as in ``study.optimize(catch=...)``;
    an interrupt propagates."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from sounding import tracking
    from sounding.data.prepare import load_prepared
    from sounding.training import fingerprint

    _quiet_optuna()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    params = job.params
    if job.storage not in _storages:
        _storages[job.storage] = _make_storage(params, job.storage)
    study = optuna.load_study(
        study_name=job.study,
        storage=_BatchView(_storages[job.storage], job.trial_id),
        sampler=optuna.samplers.RandomSampler(),  # unused: the asking process sampled every value
        pruner=_make_pruner(params, job.arch),
    )
    trial = optuna.trial.Trial(study, job.trial_id)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        trial.set_user_attr("cuda_visible_devices", os.environ["CUDA_VISIBLE_DEVICES"])
    overrides = {key: trial.params[name] for name, (key, _) in search_space(params, job.arch).items()}
    p = trial_params(params, job.arch, overrides)
    data = load_prepared(job.data_dir)
    # Named from the trial's params: a retried trial (same params) resumes the dead one's checkpoint.
    # Under the study's name: another study's finished trial (another pruner, say) would resume at its
    # end without reporting an epoch to this study's pruner, and the study would differ from a fresh one.
    run_dir = Path(job.out_dir) / "trials" / job.study / fingerprint(p, job.arch, p.seed, data.sha256)
    tags = {"stage": "tune", "arch": job.arch, "study": job.study, "optuna_trial": str(trial.number)}
    outcome: dict[str, Any] = {"number": trial.number, "state": "COMPLETE", "value": None}
    try:
        with tracking.resumable_run(
            p,
            run_dir,
            f"{job.arch}-trial{trial.number}",
            tags,
            experiment=experiment(p),
            parent_run_id=job.parent_run_id,
            logged_params={**trial.params, "epochs": p.train.epochs, "seed": p.seed},
            end_in_background=True,  # the next trial starts while the writer stores this one's end
        ) as run_id:
            start = time.perf_counter()
            try:
                # Cross-validated trials are not pruned: an epoch's val/acc is one fold's few samples.
                pruning = (
                    [] if cross_validated(p, data) else [PyTorchLightningPruningCallback(trial, "val/acc")]
                )
                outcome["value"] = _val_acc(p, job.arch, data, run_dir, run_id, pruning)
                # The value Optuna maximised (the selected epoch's val/acc, not the last epoch's), so the
                # study's best shows in its trial's row of the MLflow UI.
                tracking.send_steps(p.tracking.uri, run_id, [(0, {"objective": outcome["value"]})])
            except optuna.TrialPruned:
                outcome["state"] = "PRUNED"
            except Exception:
                outcome["state"] = "FAIL"
                raise  # the MLflow run ends FAILED
            finally:
                trial.set_user_attr("fit_s", time.perf_counter() - start)  # training time, for the overhead
                tracking.send_tags(p.tracking.uri, run_id, {"trial_state": outcome["state"]})
    except Exception as exc:
        outcome.update(state="FAIL", value=None)
        logging.getLogger(__name__).warning("trial %d failed: %r", trial.number, exc, exc_info=True)
    return outcome


def cross_validated(params: Params, data: Prepared) -> bool:
    """Whether tuning fits are judged by cross-validation (``tune.folds``) rather than on the validation
    part: it holds fewer than ``train.min_val`` samples."""
    return len(data.val.y) < params.train.min_val


def judged_samples(params: Params, data: Prepared) -> int:
    """Samples a tuning fit's accuracy counts: the validation part's, or under cross-validation the
    training and validation parts' pooled (each is held out once)."""
    return len(data.val.y) + (len(data.train.y) if cross_validated(params, data) else 0)


def folds(data: Prepared, k: int, seed: int) -> list[Prepared]:
    """The training and validation parts pooled and cut into ``k`` stratified folds (fewer when a class has
    fewer samples), shuffled by ``seed``: fold i trains on the others and is validated on its own samples.
    The test part is left out of every fold (a fold's ``test`` is its validation part, never evaluated)."""
    from sklearn.model_selection import StratifiedKFold

    x = np.concatenate([data.train.x, data.val.x])
    y = np.concatenate([data.train.y, data.val.y])
    k = min(k, int(np.bincount(y).min()))  # every fold holds every class at least once
    cut = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        replace(data, train=Split(x[fit], y[fit]), val=Split(x[held], y[held]), test=Split(x[held], y[held]))
        for fit, held in cut.split(x, y)
    ]


def _val_acc(
    p: Params, arch: str, data: Prepared, run_dir: Path, run_id: str, callbacks: list | None = None
) -> float:
    """The validation accuracy a tuning fit (trial or reference) is judged by: its ``val/acc``, or under
    cross-validation the share of the pooled samples classified right by the fold that held each out
    (each fold's accuracy logged to ``run_id`` as ``fold/val_acc``, the fold its step). ``ValueError``
    when it is not finite, a failure like an exception."""
    from sounding import tracking
    from sounding.training import fit

    def accuracy(part: Prepared, fold_dir: Path, rid: str | None, cbs: list | None) -> float:
        value = float(
            fit(p, arch, p.seed, part, fold_dir, rid, cbs, progress=False, evaluate=False).metrics["val/acc"]
        )
        if not math.isfinite(value):
            raise ValueError(f"val/acc is {value}")
        return value

    if not cross_validated(p, data):
        return accuracy(data, run_dir, run_id, callbacks)
    right = 0
    for i, part in enumerate(folds(data, p.tune.folds, p.seed)):
        value = accuracy(part, run_dir / f"fold{i}", None, None)
        tracking.send_steps(p.tracking.uri, run_id, [(i, {"fold/val_acc": value})])
        right += round(value * len(part.val.y))  # ratios back to the counts they stand for
    return right / judged_samples(p, data)


@dataclass(frozen=True)
class CheckJob:
    """One fit of given values outside the study (picklable): ``role`` ``baseline`` (the params' values)
    or ``best`` (the best trial's ``overrides``), at ``seed``."""

    trial: TrialJob
    role: str
    overrides: dict[str, Any]
    seed: int


def run_check(job: CheckJob) -> float | None:
    """Train ``job``'s values as a trial would (same length and data), at its seed, outside the study: the
    baseline when the params' values lie outside the search space (``weight_decay: 0`` under a log range,
    where a trial cannot hold them), and the fits on fresh seeds that confirm a best trial (``confirm``).
    Its validation accuracy, or ``None`` when it failed (logged)."""
    from sounding import tracking
    from sounding.data.prepare import load_prepared
    from sounding.training import fingerprint

    params, arch = job.trial.params, job.trial.arch
    p = trial_params(params, arch, job.overrides).with_overrides({"seed": job.seed})
    data = load_prepared(job.trial.data_dir)
    study = job.trial.study
    run_dir = (
        Path(job.trial.out_dir) / "trials" / study / f"{job.role}-{fingerprint(p, arch, p.seed, data.sha256)}"
    )
    fresh = job.seed != params.seed
    tags = {"stage": "tune", "arch": arch, "study": study}
    tags.update({"confirm": job.role} if fresh else {"baseline": "reference fit"})
    logged = {name: _current(p, key) for name, (key, _) in search_space(params, arch).items()}
    try:
        with tracking.resumable_run(
            p,
            run_dir,
            f"{arch}-{job.role}-seed{p.seed}" if fresh else f"{arch}-baseline",
            tags,
            experiment=experiment(p),
            parent_run_id=job.trial.parent_run_id,
            logged_params={**logged, "epochs": p.train.epochs, "seed": p.seed},
        ) as run_id:
            return _val_acc(p, arch, data, run_dir, run_id)
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "the %s fit at seed %d failed: %r", job.role, p.seed, exc, exc_info=True
        )
        return None


def confirm_seeds(params: Params) -> list[int]:
    """The fresh seeds of ``confirm``: ``tune.confirm_seeds`` of them, after the training seeds."""
    return [params.seed + params.train.n_seeds + i for i in range(params.tune.confirm_seeds)]


def confirmed(params: Params, job: TrialJob, study: Any, summary: dict[str, Any], space: dict) -> dict:
    """``confirm`` of the best trial once per study, trial and seeds: the first worker process of a shared
    study to get here fits them, under the study's lock, and leaves the result on the study; the other
    workers, and a rerun of the stage, read it there instead of fitting the same seeds again."""
    key = f"confirm: trial {summary['trial']}, seeds {confirm_seeds(params)}"
    with BudgetLock(job.storage, job.study):
        checked = study.user_attrs.get(key)  # read under the lock: another worker may have just set it
        if checked is None:
            began = time.perf_counter()
            checked = confirm(params, job, _overrides(space, summary["params"]), summary["val_samples"])
            checked["wall_s"] = time.perf_counter() - began
            study.set_user_attr(key, checked)
    return checked


def confirm(params: Params, job: TrialJob, overrides: dict[str, Any], n_val: int) -> dict[str, Any]:
    """The best trial's values (``overrides``) and the baseline's, trained again side by side on
    ``tune.confirm_seeds`` fresh seeds; the validation samples the best gains on each, paired by seed, their
    mean, its standard error, and the mean less one standard error (``lower_gain_samples``: with two seeds,
    the smaller gain), which decides."""
    seeds = confirm_seeds(params)
    jobs = [
        CheckJob(job, role, values, s)
        for s in seeds
        for role, values in (("baseline", {}), ("best", overrides))
    ]
    values = [v if v is not None else 0.0 for v in parallel.run_jobs(params, run_check, jobs)]
    baseline, best = values[0::2], values[1::2]
    gains = [samples_gained(b, a, n_val) for a, b in zip(baseline, best, strict=True)]
    mean = statistics.fmean(gains)
    sem = statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else 0.0
    return {
        "seeds": seeds,
        "baseline": baseline,
        "best": best,
        "gain_samples": gains,
        "mean_gain_samples": mean,
        "sem_gain_samples": sem,
        "lower_gain_samples": mean - sem,
    }


def _states(study: Any) -> Counter[str]:
    """Number of trials per state name (``COMPLETE``, ``PRUNED``, ``RUNNING``, ``FAIL``, ``WAITING``)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


class _Heartbeats:
    """Heartbeats of a batch's trials, sent from the process that asked them for as long as the batch
    runs (its trials may wait for a free worker): if that process dies, they stop, and after
    ``tune.grace_s`` the next process to look at the study fails the trials and re-queues them
    (``fail_stale_trials`` with Optuna's ``RetryHeartbeatStaleTrialCallback``)."""

    def __init__(self, storage: Any, trial_ids: list[int], interval: float) -> None:
        import threading

        self._storage, self._ids, self._interval = storage, trial_ids, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tune-heartbeats", daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self._ids:
                self._storage.record_heartbeat(trial_id)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> _Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _distribution(r: Range):
    from optuna.distributions import FloatDistribution, IntDistribution

    if r.is_int:
        return IntDistribution(int(r.low), int(r.high), log=r.log)
    return FloatDistribution(r.low, r.high, log=r.log)


def settled(params: Params, study: Any, n_val: int) -> str | None:
    """Why no further trial can change what the study decides, or ``None``. A trial is judged by the share
    of ``n_val`` samples it classifies right, which cannot pass 1: once a complete trial scores every one,
    no later trial can replace it as the best (Optuna keeps the earliest of equal values); and once the
    baseline scores so high that a trial scoring every sample would gain less than ``tune.min_gain`` over
    it, no trial can be adopted. Either way the trials left in the budget would only cost time."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:  # the baseline (or a reference fit) alone decides nothing: a best.json needs a trial
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    if samples_gained(1.0, best.value, n_val) == 0:
        return f"trial {best.number} classifies all {n_val} judged samples right: no trial can do better"
    value, state, source = _baseline(params, study)
    needed = samples_needed(params.tune.min_gain, n_val)
    if state == "complete" and (gain := samples_gained(1.0, value, n_val)) < needed:
        return (
            f"the baseline ({source}) classifies {n_val - gain} of {n_val} judged samples right: a trial "
            f"scoring all {n_val} would gain {gain}, fewer than tune.min_gain={params.tune.min_gain} "
            f"({needed} sample{'' if needed == 1 else 's'})"
        )
    return None


def _launcher_rank() -> int:
    """This process's rank among copies started by srun or torchrun (0 otherwise): copies of ``sounding
    tune`` on a cluster seed their samplers apart, or their random start-up trials would be the same."""
    return int(os.environ.get("SLURM_PROCID") or os.environ.get("RANK") or 0)


def run_study(
    params: Params,
    arch: str,
    study: Any,
    storage: Any,
    job: TrialJob,
    n_val: int,
    deadline: float | None,
    progress: bool,
) -> str | None:
    """Ask ``tune.batch`` trials at a time, train them side by side (``compute.workers`` processes, each
    its own trial) and tell their outcomes once the whole batch is done; until the study holds
    ``tune.n_trials`` complete + pruned trials, the deadline passes, or no trial can change the outcome
    (``settled``, judged on ``n_val`` samples): then returns why.

    Why batches: Optuna's sampler and pruner decide from the trials finished so far, so trials running
    side by side would make the search depend on which finished first. A batch is asked from the same
    history, its trials are pruned against trials finished before it (``_BatchView``) and told together,
    so the study, and the tuned values, are the same in one process or in several. Other ``sounding
    tune`` processes (other machines, on a shared PostgreSQL study) may work on the study at the same
    time: each counts the budget under a lock, and their trials then interleave by timing."""
    import optuna
    from optuna.trial import TrialState

    from sounding import tracking

    t = params.tune
    distributions = {name: _distribution(r) for name, (_, r) in search_space(params, arch).items()}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=t.max_retry)
    lock = BudgetLock(job.storage, study.study_name)
    bar = progress_.bar(t.n_trials, f"tune {arch}", "trial", leave=False) if progress else None
    outcomes: dict[int, dict[str, Any]] = {}  # of the running batch, by trial number, as they arrive
    with _InterruptGate() as gate, parallel.Workers(params, t.batch) as workers:
        try:
            while True:
                gate.raise_held()  # Ctrl-C since the last batch: stop before asking another
                with lock:
                    optuna.storages.fail_stale_trials(study)  # a dead process's trials: FAIL, re-queued
                    counts = _states(study)
                    if bar is not None:
                        bar.update(counts["COMPLETE"] + counts["PRUNED"] - bar.n)
                        with suppress(ValueError):
                            bar.set_postfix({"best val/acc": f"{study.best_value:.3f}"})
                    # Stop at the deadline, or when as many trials failed as the budget (a broken objective).
                    late = deadline is not None and time.time() >= deadline
                    late = late or counts["FAIL"] >= t.n_trials
                    size = t.n_trials - sum(counts[s] for s in COUNTED)
                    # Budget left that no trial could use to change the outcome: ask none, and say why.
                    reason = settled(params, study, n_val) if size > 0 else None
                    with warnings.catch_warnings():  # heartbeats come from ``_Heartbeats``, not ``optimize``
                        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                        asked = [
                            study.ask(distributions)
                            for _ in range(0 if late or reason else min(t.batch, size))
                        ]
                if not asked:
                    if late or reason or not counts["RUNNING"]:
                        break
                    time.sleep(1.0)  # another process's trial may still fail and be re-queued
                    continue
                jobs = [replace(job, trial_id=trial._trial_id) for trial in asked]
                outcomes.clear()
                try:
                    with _Heartbeats(storage, [j.trial_id for j in jobs], t.heartbeat_s):
                        gate.interruptible(workers.run)(
                            run_trial, jobs, on_done=lambda o: outcomes.update({o["number"]: o})
                        )
                finally:
                    # Told together, in trial order: what finished, as it finished; what did not (an
                    # interrupt, a worker process killed) as FAIL, re-queued with the same values to resume
                    # from its checkpoint on the next run; a failed baseline re-queued too (up to
                    # tune.max_retry times): without it no adoption can be decided.
                    for trial in asked:
                        o = outcomes.get(trial.number)
                        if o is None or o["state"] == "FAIL":
                            study.tell(trial, state=TrialState.FAIL)
                            if o is None or trial.user_attrs.get("baseline"):
                                retry(study, study.get_trials(deepcopy=False)[trial.number])
                        elif o["state"] == "PRUNED":
                            study.tell(trial, state=TrialState.PRUNED)
                        else:
                            study.tell(trial, o["value"])
            tracking.wait_sent()  # the trials' MLflow runs are complete before the summary
        finally:
            lock.close()
            if bar is not None:
                bar.close()
    return reason


def tune(
    params: Params,
    arch: str,
    data_dir: str | Path,
    out_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage ``tune@ARCH``: run (or resume) the study, then write ``out_dir/best.json`` and plots.

    With ``tune.enabled: false`` only ``best.json`` is written, with no overrides, so ``train`` uses
    params as they are.
    """
    import optuna

    from sounding import tracking
    from sounding.data.prepare import load_prepared
    from sounding.training import build_system

    out_dir = Path(out_dir)
    data = load_prepared(data_dir)
    if not params.tune.enabled:
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)  # a DVC out, even with nothing to plot
        summary = {"arch": arch, "enabled": False, "data_sha256": data.sha256, "overrides": {}}
        write_json(out_dir / "best.json", summary)
        return summary
    space = search_space(params, arch)
    if not space:
        raise BadInput(f"tune.space leaves nothing to tune for {arch}; set at least one range")
    build_system(params, arch, data)  # a shape the architecture cannot take fails here, before any trial
    _quiet_optuna()
    url = storage_url(params, out_dir.parent)
    name = study_name(params, arch, data.sha256)
    if url.startswith("postgresql"):  # a database that does not answer: exit 69 now, not a traceback later
        tracking.check_database(url, params.tracking.timeout_s, "Optuna storage", "tune.storage")
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)  # a DVC out, even when there is nothing to plot
    # Schema, study, baseline trial and parent run are created once, under a lock and before any worker
    # starts: processes creating one fresh storage or study at once crash (sqlite and PostgreSQL alike).
    with BudgetLock(url, SHARED):
        storage = _make_storage(params, url)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            sampler=_make_sampler(params),
        )
        baseline = {n: _current(params, key) for n, (key, r) in space.items()}
        inside = all(v in r for v, (_, r) in zip(baseline.values(), space.values(), strict=True))
        if not study.trials and params.tune.baseline and inside:
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
        parent = study.user_attrs.get("mlflow_run_id")
        if parent is None:
            tags = {"stage": "tune", "arch": arch, "study": name}
            logged = tracking.section_params(
                params, "seed", "data", "train", f"models.{arch}", "tune", "compute"
            )
            with tracking.tracked_run(
                params, f"{arch}-tune", tags, logged_params=logged, experiment=experiment(params)
            ) as rid:
                parent = rid
            study.set_user_attr("mlflow_run_id", parent)
    deadline = time.time() + params.tune.timeout if params.tune.timeout else None
    job = TrialJob(params.model_dump_json(), arch, str(data_dir), str(out_dir), url, name, parent, -1)
    # Trials finished before this call (an enqueued baseline or retry has not run yet: it is not one).
    done_before = {t.number for t in study.trials if t.state.is_finished()}
    start = time.perf_counter()
    with tracking.tracked_run(params, f"{arch}-tune", {}, run_id=parent, experiment=experiment(params)):
        if params.tune.baseline and not inside and "baseline_value" not in study.user_attrs:
            # Outside the search space the params' values cannot be a trial (a log range has no 0): they
            # are trained once beside the study, and remembered with it for a rerun.
            study.set_user_attr("baseline_value", run_check(CheckJob(job, "baseline", {}, params.seed)))
        n_val = judged_samples(params, data)
        reason = run_study(params, arch, study, storage, job, n_val, deadline, progress)
        wall_s = time.perf_counter() - start
        study = optuna.load_study(study_name=name, storage=storage)
        summary = _summarise(params, arch, data, study, space, done_before, wall_s)
        if reason:  # only then: a study that ran its budget writes the best.json it always did
            summary["settled"] = reason
        if (
            summary["adopted"] == "tuned"
            and summary["baseline_value"] is not None
            and params.tune.confirm_seeds
        ):
            # The best won a selection among noisy scores: adopt it only if its gain holds on fresh seeds.
            summary["confirm"] = confirmed(params, job, study, summary, space)
            if summary["confirm"]["lower_gain_samples"] < summary["min_gain_samples"]:
                summary.update(adopted="baseline", overrides={})
        # As configured, password masked; the default sqlite file as the path it was given (relative in
        # the DVC stage), so a committed best.json names no folder of the machine that ran it.
        summary["storage"] = public_url(storage_url(params, out_dir.parent, resolve=False))
        write_json(out_dir / "best.json", summary)
        pngs = _plots(study, out_dir / "plots")
        # Every worker process of a shared study ends here and writes the same parent run: one at a time,
        # since MLflow's SQL stores insert a tag absent when read, and two processes inserting it at once
        # fail the second (UNIQUE constraint, seen on tests/test_tuning_parallel.py's two workers).
        with BudgetLock(url, SHARED):
            _publish_summary(params, parent, summary, reason, [*pngs, out_dir / "best.json"])
    return summary


def _publish_summary(
    params: Params, parent: str, summary: dict[str, Any], reason: str | None, files: list[Path]
) -> None:
    """The study's outcome on its parent MLflow run: metrics, the ``adopted`` tag and the best values."""
    from sounding import tracking

    c = tracking.client(params.tracking.uri)
    tracking.log_metrics(
        params.tracking.uri,
        parent,
        {
            "best_val_acc": summary["value"],
            **(
                {"baseline_val_acc": summary["baseline_value"]}
                if summary["baseline_value"] is not None
                else {}
            ),
            **(
                {"confirm_lower_gain_samples": summary["confirm"]["lower_gain_samples"]}
                if "confirm" in summary
                else {}
            ),
            **{f"trials_{k}": v for k, v in summary["counts"].items()},
        },
        step=0,
    )
    c.set_tag(parent, "adopted", summary["adopted"])  # tuned, or baseline: the params' values kept
    if reason:
        c.set_tag(parent, "settled", reason)  # why the study ran fewer than tune.n_trials trials
    for name_, value in summary["params"].items():
        c.set_tag(parent, f"best.{name_}", str(value))
    tracking.log_artifacts(params.tracking.uri, parent, files, "tuning")


def _summarise(
    params: Params,
    arch: str,
    data: Any,
    study: Any,
    space: dict,
    done_before: set[int],
    wall_s: float,
) -> dict[str, Any]:
    """best.json: the best trial; the values ``train`` applies as dotted overrides (the best trial's when
    ``adopted`` is ``tuned``; none, the params' own values, when the best gains less than ``tune.min_gain``
    over the baseline: ``adopted: baseline``; ``tune`` then checks a ``tuned`` on fresh seeds, ``confirm``); the baseline's value and state; trial counts, epochs, and the time this
    call spent outside training (``wall_s`` vs ``fit_s`` of the trials it ran: those not in ``done_before``)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    counts = {name: sum(t.state == s for t in trials) for s, name in names.items()}
    if not counts["complete"]:
        raise RuntimeError(f"study {study.study_name} has no complete trial ({counts}); see the MLflow runs")
    best = study.best_trial
    baseline_value, baseline_state, baseline_source = _baseline(params, study)
    if baseline_state == "failed":
        raise BadInput(
            f"{arch}: the baseline ({baseline_source}: the params' own values) failed, retried "
            f"{params.tune.max_retry} time(s); its MLflow run in experiment {experiment(params)} says why. "
            "Fix those values (they are what train uses when tuning gains too little) or set tune.baseline=false"
        )
    # The champion/challenger rule applied to hyperparameters: the params' own values stay unless the
    # best trial beats them on validation by more than noise.
    n_val = judged_samples(params, data)
    gain = samples_gained(best.value, baseline_value, n_val) if baseline_value is not None else None
    adopted = (
        "baseline" if gain is not None and gain < samples_needed(params.tune.min_gain, n_val) else "tuned"
    )
    fit_s = sum(t.user_attrs.get("fit_s", 0.0) for t in trials if t.number not in done_before)
    processes = parallel.n_workers(params, params.tune.batch)  # the bookkeeping share means one process
    return {
        "arch": arch,
        "enabled": True,
        "study": study.study_name,
        "data_sha256": data.sha256,
        "value": best.value,
        "trial": best.number,
        "params": best.params,
        "overrides": _overrides(space, best.params) if adopted == "tuned" else {},
        "adopted": adopted,
        "baseline_value": baseline_value,
        "baseline_state": baseline_state,
        "baseline_source": baseline_source,
        "val_samples": n_val,
        "folds": len(folds(data, params.tune.folds, params.seed)) if cross_validated(params, data) else None,
        "gain_samples": gain,
        "min_gain_samples": samples_needed(params.tune.min_gain, n_val),
        "counts": counts,
        "epochs_run": sum(len(t.intermediate_values) for t in trials),
        "epochs_budget": params.tune.n_trials * params.tune_epochs(arch),
        "wall_s": wall_s,
        "fit_s": fit_s,
        "batch": params.tune.batch,
        "processes": processes,
        "bookkeeping_fraction": (wall_s - fit_s) / wall_s if processes == 1 and fit_s else None,
    }


def _overrides(space: dict, values: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as the dotted params keys they set."""
    return {space[n][0]: v for n, v in values.items()}


def _baseline(params: Params, study: Any) -> tuple[float | None, str, str | None]:
    """The baseline's validation accuracy, its state (``complete``, ``failed`` once its retries failed too,
    or ``disabled`` with ``tune.baseline: false``) and where it comes from (``trial N``, or ``reference fit`` outside the
    search space)."""
    from optuna.trial import TrialState

    if not params.tune.baseline:
        return None, "disabled", None
    if "baseline_value" in study.user_attrs:
        value = study.user_attrs["baseline_value"]
        return value, "complete" if value is not None else "failed", "reference fit"
    tried = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]  # with retries
    done = next((t for t in tried if t.state == TrialState.COMPLETE), None)
    if done is not None:
        return done.value, "complete", f"trial {done.number}"
    return None, "failed", f"trial {tried[0].number}" if tried else None


def samples_gained(best: float, baseline: float, n_val: int) -> int:
    """Validation samples the best trial classified right beyond the baseline. Accuracies are ratios of
    counts (268/400 is 0.67), and a difference of two in floating point is not exact, so it is rounded back
    to the count it stands for before it is compared: 268 − 264 is 4 samples, not 3.9999…"""
    return round((best - baseline) * n_val)


def samples_needed(min_gain: float, n_val: int) -> int:
    """``tune.min_gain`` as a count of validation samples: 0.01 of 400 is 4 (a fraction rounds up)."""
    return math.ceil(min_gain * n_val - 1e-9)


LEGEND_TRIALS = 20
"""Trials beyond which the intermediate-values plot has no legend (Optuna draws one entry per trial)."""


def _plots(study: Any, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances, intermediate values, parallel coordinates (PNG)."""
    import optuna.visualization.matplotlib as ov

    from sounding import plots

    made = []
    per_epoch = any(t.intermediate_values for t in study.trials)  # cross-validated trials report no epochs
    for name, fn in (
        ("history", ov.plot_optimization_history),
        ("importances", ov.plot_param_importances),
        *([("intermediate", ov.plot_intermediate_values)] if per_epoch else []),
        ("parallel", ov.plot_parallel_coordinate),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances need two complete trials
                logging.getLogger(__name__).warning("no %s plot: %s", name, exc)
                continue
        fig = ax.figure
        fig.set_size_inches(8, 5)
        legend = ax.get_legend()
        if name == "intermediate" and len(study.trials) > LEGEND_TRIALS and legend:
            legend.remove()  # one entry per trial: past a few dozen it covers the plot and the layout
        made.append(plots.save(fig, out_dir / f"{name}.png"))
    return made


def tuned(
    params: Params, arch: str, best_path: str | Path, data_sha256: str
) -> tuple[Params, dict[str, Any], str]:
    """Params with the tuned values of ``best_path`` applied, after checking they belong to this
    architecture and data. Returns the params, what was applied, and the tuning's decision: ``tuned``,
    ``baseline`` (the params' values kept) or ``disabled``."""
    best_path = Path(best_path)
    try:
        best = json.loads(best_path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"{best_path}: not a readable tuning result ({exc}); run `sounding tune {arch}`"
        ) from None
    if best.get("arch") != arch:
        raise BadInput(f"{best_path} holds tuning for {best.get('arch')!r}, not {arch!r}")
    if best.get("data_sha256") != data_sha256:
        raise BadInput(
            f"{best_path} was tuned on other data (sha256 {str(best.get('data_sha256'))[:12]}, "
            f"prepared data is {data_sha256[:12]}); rerun `sounding tune {arch}`"
        )
    overrides = best.get("overrides") or {}
    adopted = best.get("adopted", "tuned") if best.get("enabled", True) else "disabled"
    return (params.with_overrides(overrides) if overrides else params), overrides, adopted
