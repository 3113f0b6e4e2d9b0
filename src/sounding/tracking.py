"""MLflow tracking: one run context that always ends FINISHED, FAILED or KILLED, tags, flat params, artifacts.

Metrics go to the store in batches (``log_steps``: up to 1000 values per call). Training buffers epoch
metrics and hands them every few seconds to ``MetricWriter``, a child process that writes them while
training goes on. MLflow's own asynchronous queue is not used: it is a thread, which competes with the
training loop for the GIL, and closing it waits about a second per run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sounding.config import Params

STATUS_ON_INTERRUPT = "KILLED"


PIPELINE_WRITES = ("dvc.lock", "metrics", "plots", "reports", "tuning")
"""Tracked files and folders the pipeline's stages write (DVC's lock file, and outputs kept in git)."""


@cache
def git_sha() -> str:
    """The commit the code runs from, with ``-dirty`` when tracked files have changes; ``unknown`` outside
    git. What the pipeline itself writes into git is left out (``dvc.lock``, ``metrics/``, ``plots/``,
    ``reports/``): ``dvc repro`` rewrites them as it runs, so every later stage's run would be dirty."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                *(f":(top,exclude){out}" for out in PIPELINE_WRITES),
            ],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """Where a run comes from, in MLflow's standard tags (``mlflow.user``, ``mlflow.source.name`` and
    ``.type``, ``mlflow.source.git.commit``: the UI's User, Source and Version columns), as MLflow's own
    ``start_run`` sets them, with the command line as the source; and, when DVC runs the command, the
    stage and the experiment (``dvc.stage``, ``dvc.exp_name``: DVC's ``DVC_STAGE``, ``DVC_EXP_NAME``)."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags()
    tags["mlflow.source.name"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]
    sha = git_sha()
    if sha != "unknown":
        tags["mlflow.source.git.commit"] = sha.removesuffix("-dirty")
    for tag, variable in (("dvc.stage", "DVC_STAGE"), ("dvc.exp_name", "DVC_EXP_NAME")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


_inherited_tags: dict[str, str] | None = None  # a worker process's: those of the process that started it
_publication: str | None = None  # what this process's runs wait for (``held_until_published``)
PUBLICATION_TAG = "sounding.publication"
"""Tag of a run whose stage publishes outputs (``held_until_published``): the id of that publication."""
UNPUBLISHED_TAG = "sounding.unpublished"
"""Tag of a run whose stage's outputs were not published: the error that kept them from it."""
ORCHESTRATION_TAGS_ENV = "SOUNDING_ORCHESTRATION_TAGS"
"""Environment variable holding, as JSON, the orchestration tags of the flow run that started this command
(the retraining flow runs each stage's command as a process of its own, outside the flow's context)."""


def orchestration_tags() -> dict[str, str]:
    """``prefect.flow_run_id`` and ``prefect.deployment`` of the Prefect flow run this code runs in, if any
    (in a stage command the flow started: those it passed in ``SOUNDING_ORCHESTRATION_TAGS``)."""
    if os.environ.get(ORCHESTRATION_TAGS_ENV):
        return json.loads(os.environ[ORCHESTRATION_TAGS_ENV])
    if "prefect" not in sys.modules:  # not under Prefect; importing it would cost a second for nothing
        return {}
    from prefect.runtime import flow_run

    return _flow_run_tags(flow_run.id) if flow_run.id else {}


def context_tags() -> dict[str, str]:
    """The tags every run started here carries from its context: the ``orchestration_tags``, and
    ``sounding.publication`` while a stage holds its runs until its outputs are published
    (``held_until_published``). In a worker process of ``parallel``: those of the process that started it."""
    if _inherited_tags is not None:
        return dict(_inherited_tags)
    return {**orchestration_tags(), **({PUBLICATION_TAG: _publication} if _publication else {})}


def inherit_context_tags(tags: dict[str, str]) -> None:
    """Make ``tags`` this process's context tags (a worker process runs outside the flow's context)."""
    global _inherited_tags
    _inherited_tags = dict(tags)


@cache
def _flow_run_tags(flow_run_id: str) -> dict[str, str]:
    # Looking the deployment up is an API call; a flow run's deployment never changes.
    from prefect.runtime import deployment

    name = deployment.name
    return {"prefect.flow_run_id": flow_run_id, **({"prefect.deployment": name} if name else {})}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.01}}`` → ``{"train.lr": "0.01"}``; lists are JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return flat


def section_params(params: Params, *sections: str) -> dict[str, Any]:
    """The params under ``sections`` (dotted paths: ``train``, ``models.cnn``), nested as in ``Params``, for
    ``logged_params``: a run shows what shaped it, not every other architecture's keys."""
    dumped, picked = params.model_dump(mode="json"), {}
    for section in sections:
        node, target = dumped, picked
        *parents, last = section.split(".")
        for part in parents:
            node, target = node[part], target.setdefault(part, {})
        target[last] = node[last]
    return picked


def log_dataset(uri: str, run_id: str, name: str, sha256: str, source: str, context: str) -> None:
    """Record the prepared data as the run's MLflow dataset input (the UI's Dataset column): ``name``, the
    data's sha256 as digest (its first 36 characters: MLflow's column length), ``source`` its folder."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    dataset = Dataset(name=name, digest=sha256[:36], source_type="local", source=source)
    tags = [InputTag("mlflow.data.context", context)]
    for attempt in range(3):
        try:
            client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
            return
        except MlflowException as error:
            # MLflow's store looks the dataset up and inserts it when missing: runs logging the same data
            # at once (seeds side by side on one server) race, and the later insert breaks the store's
            # unique key (sqlite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint").
            # The whole call rolled back; a retry finds the other run's row and links it.
            if "unique constraint" not in str(error).lower() or attempt == 2:
                raise


def resolve_uri(uri: str) -> str:
    """A relative sqlite path resolved against ``workspace_root()``. MLflow caches stores by URI string, so
    an unresolved relative URI could reach another folder's store after a change of folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(workspace_root() / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def workspace_root() -> Path:
    """Where relative stores live: the outermost DVC repository holding the current folder, else the
    current folder. DVC runs ``dvc exp run --queue`` and ``--temp`` experiments in a copy of the workspace
    under its ``.dvc/tmp/exps``, which it deletes afterwards; anchored on the workspace, their MLflow runs
    land in the workspace's ``mlflow.db`` beside every other run."""
    from sounding.files import dvc_roots

    roots = dvc_roots(Path.cwd())
    return roots[-1] if roots else Path.cwd().resolve()


def use_store(uri: str) -> None:
    """Point MLflow's fluent API (tracking and registry) at ``uri``."""
    import mlflow

    mlflow.set_tracking_uri(resolve_uri(uri))
    mlflow.set_registry_uri(resolve_uri(uri))


def check_store(t: Any) -> None:
    """Stop at once, naming the store, when the tracking server or database (``t``: the ``tracking``
    params) does not answer within ``t.timeout_s``, where MLflow's client would retry for minutes; and
    bound every later request to a server the same way (``MLFLOW_HTTP_REQUEST_TIMEOUT``, two retries,
    unless the environment sets them). A sqlite file needs no check."""
    from sounding.errors import ServiceUnavailable

    uri = t.uri
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(t.timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=t.timeout_s).close()
        except urllib.error.HTTPError:
            pass  # the server answered (an auth proxy may refuse /health): it is up
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailable(
                f"tracking server {uri} did not answer within {t.timeout_s:g} s ({reason}); start it "
                "(`make mlflow-server`) or set tracking.uri, then rerun"
            ) from None
    elif uri.startswith("postgresql"):
        check_database(uri, t.timeout_s, "tracking database", "tracking.uri")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says that a tracking server did not answer:
    connection refused or reset, or no answer in time, as opposed to an answer refusing the request."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    # MLflow's REST client reports a request that failed on every retry as an MlflowException
    return "Max retries exceeded" in str(exc)


def lost_reason(exc: BaseException) -> str:
    """A few words on why a store did not answer (``unreachable(exc)``)."""
    text = str(exc)
    for marker, reason in (("refused", "connection refused"), ("timed out", "no answer in time")):
        if marker in text:
            return reason
    return text.splitlines()[0][:120] if text else type(exc).__name__


def lost_store(uri: str, reason: str) -> str:
    """What to do when the tracking store ``uri`` stopped answering in the middle of a command."""
    return (
        f"tracking server {uri} stopped answering during the run ({reason}); training went on and its "
        "checkpoints hold every epoch: once the server answers, rerun the same command, which re-attaches "
        "to the same MLflow run and logs the epochs it lacks"
    )


def check_database(url: str, timeout_s: float, what: str, setting: str) -> None:
    """``ServiceUnavailable`` naming ``what`` (password masked) when a PostgreSQL ``url`` does not accept a
    connection within ``timeout_s``."""
    import sqlalchemy

    from sounding.errors import ServiceUnavailable

    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": max(1, round(timeout_s))}
    )
    try:
        engine.connect().close()
    except sqlalchemy.exc.OperationalError as exc:
        shown = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise ServiceUnavailable(
            f"{what} {shown} did not answer within {timeout_s:g} s ({reason}); start it or set {setting}, "
            "then rerun"
        ) from None
    finally:
        engine.dispose()


def client(uri: str):
    """The client of a store; one per store and process (creating one opens and schema-checks the database)."""
    return _client(resolve_uri(uri))


@cache
def _client(uri: str):
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)  # one store holds runs and registry
    from filelock import FileLock

    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Creating the client creates or upgrades the database's schema (Alembic migrations), which MLflow does
    # not guard against another process doing the same: stages starting side by side on a fresh workspace
    # failed with "Online migration expected to match one row" or "duplicate column". One at a time; once
    # the schema is there, the check under the lock is a read.
    with FileLock(path.with_name(f".{path.name}.schema.lock")):
        _write_ahead_log(path)
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _write_ahead_log(path: Path) -> None:
    """Switch a sqlite store to write-ahead logging (a property of the file, kept once set): a commit costs
    one fsync instead of several, and readers (the UI, other processes) no longer block writers."""
    import sqlite3

    with closing(sqlite3.connect(path, timeout=60)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing. Processes starting at once against one store may
    all find it missing: the one whose creation loses the race reads the winner's."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    try:
        return c.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return c.get_experiment_by_name(name).experiment_id


@contextmanager
def tracked_run(
    params: Params,
    run_name: str,
    tags: dict[str, str],
    run_id: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    logged_params: dict[str, Any] | None = None,
    end_in_background: bool = False,
) -> Iterator[str]:
    """Create (or re-attach to ``run_id``) an MLflow run and yield its id.

    The run ends FINISHED on success, KILLED on Ctrl-C or SIGTERM (raised as KeyboardInterrupt by the
    CLI), FAILED on any other exception; inside ``held_until_published``, a run that succeeds stays RUNNING
    until its stage's outputs are published (or end FAILED when they are not). Params are the flattened ``Params``, or ``logged_params`` when
    given (a tuning trial logs what it varies; its parent run holds the rest), written by the writer
    process like the metrics. The run ends once its params and metrics are stored; ``end_in_background``
    leaves that to the writer process, which ends it after them (FAILED if they failed), so the caller
    goes on at once: ``wait_sent`` returns once it has.
    """
    from mlflow.entities import RunTag

    uri = params.tracking.uri
    c = client(uri)
    if run_id is None:
        all_tags = {
            **source_tags(),
            "git_sha": git_sha(),
            "mlflow.runName": run_name,
            **context_tags(),
            **tags,
        }
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = c.create_run(
            experiment_id(uri, experiment or params.tracking.experiment), run_name=run_name, tags=all_tags
        )
        run_id = run.info.run_id
        flat = flatten(logged_params if logged_params is not None else params.model_dump(mode="json"))
        # Through the writer: a hundred params cost a 150-epoch MLP fit 0.5-1% when written here; the run
        # ends after them, FAILED if they failed.
        _send("params", uri, run_id, {k: v[:6000] for k, v in flat.items()})
        _unstepped.add(run_id)
    else:
        c.update_run(run_id, status="RUNNING")
        publication = {k: v for k, v in context_tags().items() if k == PUBLICATION_TAG}
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**tags, **publication}.items()])
        if UNPUBLISHED_TAG in c.get_run(run_id).data.tags:  # this time its stage may publish
            c.delete_tag(run_id, UNPUBLISHED_TAG)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = STATUS_ON_INTERRUPT
        raise
    finally:
        if status == "FINISHED" and PUBLICATION_TAG in context_tags():
            status = HELD
        if end_in_background:
            _send("end", uri, run_id, status)
        else:
            _end(c, run_id, status)


HELD = "HELD"
"""The end a successful run gets inside ``held_until_published``: none yet (it stays RUNNING), unless
writing its metrics or params failed (FAILED)."""


@contextmanager
def held_until_published(uri: str, enabled: bool = True) -> Iterator[None]:
    """Hold the runs started inside (in this process and its ``parallel`` workers) RUNNING until the block
    ends: FINISHED when it ends normally, FAILED (KILLED on Ctrl-C) and tagged ``sounding.unpublished``
    with the error when it raises. Wrapped around ``files.published_together``, a run is FINISHED only
    when what it made is where the pipeline reads it. Inside another such block, it joins that one (the
    outer stage publishes). Runs are found by their ``sounding.publication`` tag, so runs a rerun
    re-attaches to (a seed resumed from its checkpoint) are held too."""
    global _publication
    if not enabled or _publication is not None or _inherited_tags is not None:
        yield
        return
    import uuid

    _publication = uuid.uuid4().hex
    try:
        yield
    except BaseException as error:
        _end_held(uri, _publication, error)
        raise
    else:
        _end_held(uri, _publication, None)
    finally:
        _publication = None


def _end_held(uri: str, publication: str, error: BaseException | None) -> None:
    """End the runs of ``publication``: FINISHED without ``error``; else those still RUNNING as it says. After an
    error this is best effort (the user must see the error that stopped the stage, not one of the store's),
    and skipped when that error is the store's own: its runs stay RUNNING, for a rerun to re-attach."""
    from sounding.errors import ServiceUnavailable

    if error is not None and (isinstance(error, ServiceUnavailable) or unreachable(error)):
        return
    resolved = resolve_uri(uri)
    if resolved.startswith("sqlite:///") and not Path(resolved.removeprefix("sqlite:///")).exists():
        return  # a store never created holds no run (bad input stopped the stage first): do not create it
    try:
        wait_sent()  # this process's runs' last writes (and a failed write's FAILED) are in
        c = client(uri)
        # Published, every run of the publication succeeded: one closed meanwhile by ``runs cleanup`` (held
        # runs are silent until the stage ends) ends FINISHED too, as a run it closed does when it finishes.
        state = "attributes.status != 'FINISHED'" if error is None else "attributes.status = 'RUNNING'"
        held = c.search_runs(
            [e.experiment_id for e in c.search_experiments()],
            f"tags.`{PUBLICATION_TAG}` = '{publication}' and {state}",
            max_results=50000,
        )
        for run in held:
            if error is None:
                c.set_terminated(run.info.run_id, "FINISHED")
            else:
                c.set_tag(run.info.run_id, UNPUBLISHED_TAG, f"{type(error).__name__}: {error}"[:5000])
                status = STATUS_ON_INTERRUPT if isinstance(error, KeyboardInterrupt) else "FAILED"
                c.set_terminated(run.info.run_id, status)
    except Exception:
        if error is None:
            raise
        logging.getLogger(__name__).warning(
            "could not end the runs of the unpublished outputs", exc_info=True
        )


def _run_exists(uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client(uri).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _end(c: Any, run_id: str, status: str) -> None:
    """End a run once the writer has stored what it was sent: MLflow refuses a run's metrics after its end,
    and a parent run (a study's) ends after its children's ends. When the store stopped answering, the run
    is left as it is there (RUNNING) rather than asked again: a rerun re-attaches to it."""
    failing = sys.exc_info()[1]
    if failing is not None and unreachable(failing):
        return
    try:
        wait_sent()
    except RuntimeError as exc:
        if status in ("FINISHED", HELD):
            c.set_terminated(run_id, "FAILED")
            raise
        # The run already failed or was interrupted: that error is the one to report.
        logging.getLogger(__name__).warning("%s", exc)
    if status != HELD:
        c.set_terminated(run_id, status)


@contextmanager
def resumable_run(
    params: Params,
    run_dir: Path,
    run_name: str,
    tags: dict[str, str],
    experiment: str | None = None,
    parent_run_id: str | None = None,
    logged_params: dict[str, Any] | None = None,
    end_in_background: bool = False,
) -> Iterator[str]:
    """``tracked_run`` tied to a checkpoint folder: its id is kept in ``run_dir/run.json``, so a rerun
    after a crash re-attaches to the same MLflow run that the resumed checkpoint belongs to. When that run
    is not in this store (another ``tracking.uri``, a fresh ``mlflow.db``), a new run is started instead:
    the resumed training then logs the epochs it replays from the checkpoint's history to it."""
    from sounding.files import write_json

    state = Path(run_dir) / "run.json"
    run_id = json.loads(state.read_text())["run_id"] if state.is_file() else None
    if run_id is not None and not _run_exists(params.tracking.uri, run_id):
        logging.getLogger(__name__).warning(
            "the checkpoint in %s belongs to MLflow run %s, which %s does not hold: a new run",
            run_dir,
            run_id,
            params.tracking.uri,
        )
        run_id = None
    with tracked_run(
        params,
        run_name,
        tags,
        run_id=run_id,
        experiment=experiment,
        parent_run_id=parent_run_id,
        logged_params=logged_params,
        end_in_background=end_in_background,
    ) as run_id:
        write_json(state, {"run_id": run_id})
        yield run_id


def as_number(value: float) -> float:
    """The number a metric stands for. Torch computes metrics in float32, and a float32 widened to a Python
    float carries binary noise (an accuracy of 0.932 reads 0.9319999814033508 in MLflow's UI and in JSON);
    such a value becomes the shortest decimal that is the same float32. A value that is no float32 (a
    timing, a mean over seeds) is returned as it is."""
    import numpy as np

    with np.errstate(over="ignore"):
        single = np.float32(value)
    return float(str(single)) if float(single) == value else float(value)


def log_steps(uri: str, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Log several steps' metrics synchronously, in as few ``log_batch`` calls as MLflow allows, each value
    as the number it stands for (``as_number``)."""
    from mlflow.entities import Metric

    _unstepped.discard(run_id)
    now = int(time.time() * 1000)
    batch = [Metric(k, as_number(v), now, step) for step, metrics in rows for k, v in metrics.items()]
    for start in range(0, len(batch), 1000):  # MLflow's per-call limit
        client(uri).log_batch(run_id, metrics=batch[start : start + 1000])


LOST = "lost "
"""The writer's answer for an item not written because its store stopped answering: ``lost [URI, REASON]``."""


class TrackingWriter:
    """Writes to MLflow from a child process, so the training process only hands things over.

    MLflow's SQL store spends about 80 µs of Python per metric value (SQLAlchemy objects, one row each);
    a 150-epoch MLP logs some 1,650 values, 3% of its fit when written in the training process. The child
    (``python -m sounding.tracking_writer``) runs on another core and writes metric batches, params, tags
    and, for runs that ask for it, the run's end. It is a plain subprocess, not a multiprocessing one,
    which would re-run the caller's script in the child when it lacks a ``__main__`` guard. Each item goes to
    its stdin as a JSON line; it answers each with a line, empty or the error, in order. One child serves
    every run of a process (it starts once: importing MLflow takes a second or two, overlapped with the
    training); ``wait`` returns once everything sent so far (or sent for one run) is in the store, and
    raises if a write failed. The child exits when its stdin closes: with its parent, even after
    ``kill -9``, once it has written what it was sent.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sounding.tracking_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._sent: deque[str] = deque()  # the run id of each item not yet answered, in order
        self._errors: list[str] = []
        self._lost: dict[str, str] = {}  # stores that stopped answering: uri -> reason
        self._lock = threading.Lock()  # lines and answers stay paired when threads share the writer

    def send(self, op: str, uri: str, run_id: str, payload: Any) -> None:
        line = json.dumps([op, resolve_uri(uri), run_id, payload]) + "\n"
        with self._lock:
            try:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
            except BrokenPipeError:
                pass  # the child is gone: ``wait`` says so
            self._sent.append(run_id)

    def wait(self, run_id: str | None = None) -> None:
        """Block until every item sent so far, or every one sent for ``run_id``, is answered."""
        with self._lock:
            self._wait(run_id)

    def _wait(self, run_id: str | None) -> None:
        while self._sent if run_id is None else run_id in self._sent:
            answer = self._proc.stdout.readline()
            if not answer:  # end of file: the child exited
                raise RuntimeError(
                    f"the MLflow writer process (pid {self._proc.pid}) died with {len(self._sent)} "
                    "item(s) unwritten"
                )
            self._sent.popleft()
            if answer.startswith(LOST):
                uri, reason = json.loads(answer.removeprefix(LOST))
                self._lost.setdefault(uri, reason)
            elif answer.strip():
                self._errors.append(answer.strip())
        if self._lost:  # what the writer could not store is in the checkpoints: a rerun logs it
            from sounding.errors import ServiceUnavailable

            uri, reason = next(iter(self._lost.items()))
            self._lost, self._errors = {}, []
            raise ServiceUnavailable(lost_store(uri, reason))
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError("logging to MLflow failed: " + "; ".join(errors))


_writer: TrackingWriter | None = None


def _send(op: str, uri: str, run_id: str, payload: Any) -> None:
    global _writer
    if _writer is None:
        _writer = TrackingWriter()
    _writer.send(op, uri, run_id, payload)


_unstepped: set[str] = set()
"""Runs this process created and has sent no metrics for: they hold none, with no need to ask the store."""


def send_steps(uri: str, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """``log_steps`` through this process's ``TrackingWriter`` (started on first use)."""
    _unstepped.discard(run_id)
    _send("metrics", uri, run_id, rows)


def sent_steps(uri: str, run_id: str, key: str) -> list[int]:
    """``logged_steps`` once everything sent for ``run_id`` is stored; for a run this process created and
    sent no metrics, [] at once (a fresh fit does not wait for its run's params to be written)."""
    if run_id in _unstepped:
        return []
    wait_sent(run_id)
    return logged_steps(uri, run_id, key)


def send_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set tags through this process's ``TrackingWriter``."""
    _send("tags", uri, run_id, tags)


def wait_sent(run_id: str | None = None) -> None:
    """Block until everything handed to the writer (for ``run_id``, when given) is in its store."""
    if _writer is not None:
        _writer.wait(run_id)


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log one step's metrics in one call."""
    log_steps(uri, run_id, [(step, metrics)])


def logged_steps(uri: str, run_id: str, key: str) -> list[int]:
    """Steps at which ``key`` was logged in a run, sorted (used to resume without repeating epochs)."""
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))


def log_artifacts(uri: str, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
    c = client(uri)
    for path in paths:
        if path.is_file():
            c.log_artifact(run_id, str(path), artifact_path)
