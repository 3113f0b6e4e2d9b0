"""Scheduled retraining with Prefect: the stages of ``dvc.yaml``, run through DVC as Prefect tasks.

**One graph.** The tasks are DVC's own stages: ``pipeline(root)`` asks DVC for them and their edges
(``Repo.index.graph``: every stage of the workspace's ``dvc.yaml`` files, ``foreach`` items such as
``train@cnn`` included) and orders them so that a stage comes after every stage it depends on. A stage
added to ``dvc.yaml`` is a task of the next run, with no edit here.

**One record: DVC's.** DVC decides whether a stage is stale (``dvc status``) and records what ran
(``dvc commit``: the hashes of the stage's deps, params and outputs in ``dvc.lock``, the outputs in DVC's
cache). A flow run and a ``dvc repro`` therefore see the same state: after either, the other runs nothing.

**Stages side by side, DVC one call at a time.** DVC runs one stage at a time in a workspace: a second
``dvc repro`` fails on DVC's repository lock (``.dvc/tmp/lock``), and DVC's maintainers do not support
running its stages concurrently in one workspace (iterative/dvc#5795; parallel repros corrupted
``.dvc/tmp/rwlock``, treeverse/dvc#8118). So the flow does not start ``dvc repro`` per stage: a task
runs its stage in three steps, and only the short DVC steps are serialised, under one lock of this
process (the tasks are threads of the flow's process), so that two DVC commands never meet:

1. stale? One ``dvc status`` for every stage when the run starts; a stage whose upstream stage ran in
   this run asks again (``dvc status STAGE``) when its turn comes, since that stage may have changed its
   deps, or rewritten them identical;
2. a stale stage's command (``cmd`` in ``dvc.yaml``), outside the lock, side by side with other stages'
   (at most ``retrain.max_workers`` at once), after removing its outputs and with DVC's variables
   ``DVC_ROOT`` and ``DVC_STAGE``, as ``dvc repro`` runs it;
3. ``dvc commit --force STAGE``, under the lock.

Unlike ``dvc repro``, the flow does not restore a stage from DVC's run cache: a stage whose exact inputs
ran once before runs again.

**The workspace.** The flow holds ``.dvc/tmp/sounding.lock`` exclusively for the whole run, as ``sounding
repro`` does (``sounding.repro.hold_workspace``): ``sounding repro``, a second flow and stage commands run
by hand are refused while it runs, and a flow that finds the workspace held (or a ``dvc`` command at
work) waits for it. Stage commands run with ``DVC_STAGE`` set, as under DVC, so they do not ask for the
hold themselves; each inherits the flow's, so a stage left running by a killed flow keeps the workspace
until it exits.

**Failures.** A stage command that exits 69 (``ServiceUnavailable``: a tracking server or database did
not answer) is retried ``retrain.retries`` times with exponential backoff from ``retrain.retry_delay_s``;
any other failure (2: bad input; a divergence, a crash) is final at once, with the last lines of the
command's stderr in the task's error. A failed stage fails the run once the stages that do not depend on
it have ended; what they ran is in ``dvc.lock``.

**Notifications and the leaderboard.** A run that fails (a stage failed, the timeout) or crashes tells
``retrain.notify`` through a Prefect notification block (the flow's ``on_failure`` and ``on_crashed``
hooks, as Prefect's documentation shows); a run that succeeds publishes ``reports/leaderboard.md`` as the
markdown artifact ``leaderboard``, in the Prefect UI's Artifacts page and on the flow run's page.

**Timeout.** ``retrain.timeout_s`` bounds a run. It is read from ``params.yaml`` when the run starts, so
the stages run in a subflow created with that ``timeout_seconds``; past it, the stage commands still
running are stopped (SIGTERM to their process groups, SIGKILL 30 s later) and the run ends failed.
"""

from __future__ import annotations

import sounding  # noqa: F401  (first: importing it turns telemetry off before prefect's import reads it)

# isort: split
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from sounding import tracking
from sounding.config import ARCHS, RetrainParams, load_params
from sounding.errors import BadInput, ServiceUnavailable
from sounding.parallel import n_workers
from sounding.repro import check_workspace_free, hold_workspace

STDERR_LINES = 20
"""Lines of a failed command's stderr quoted in its task's error."""
GRACE_S = 30.0
"""Seconds a stopped stage command has, after SIGTERM, to close its MLflow runs before SIGKILL."""


@dataclass(frozen=True)
class Stage:
    """One DVC pipeline stage, as the flow runs it."""

    name: str
    """DVC's address, relative to the workspace: ``prepare``, ``train@cnn``, ``sub/dvc.yaml:stage``."""
    cmd: tuple[str, ...]
    """Shell commands, run in order in ``wdir``."""
    wdir: str
    outs: tuple[str, ...]
    """Outputs DVC removes before running the command (all but ``persist: true`` ones)."""
    upstream: tuple[str, ...]
    """The stages whose outputs this one reads."""


def pipeline(root: Path, targets: list[str] | None = None) -> list[Stage]:
    """The pipeline stages of the DVC repository at ``root``, each after the stages it depends on (ties in
    ``dvc.yaml`` order); with ``targets``, those stages and the stages they depend on only."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        position = {s: i for i, s in enumerate(repo.index.stages)}
        names = {s: _address(s, root) for s in graph if isinstance(s, PipelineStage)}
        if targets:
            unknown = sorted(set(targets) - set(names.values()))
            if unknown:
                raise BadInput(
                    f"no stage {', '.join(unknown)} in dvc.yaml; its stages: {', '.join(names.values())}"
                )
            wanted = [s for s, n in names.items() if n in targets]
            keep = set(wanted).union(*(nx.descendants(graph, s) for s in wanted))
            graph = graph.subgraph(keep)
        order = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=position.__getitem__)
        return [
            Stage(
                name=names[s],
                cmd=tuple(s.cmd if isinstance(s.cmd, list) else s.cmd.splitlines()),
                wdir=s.wdir,
                outs=tuple(o.fs_path for o in s.outs if not o.persist),
                upstream=tuple(names[d] for d in graph.successors(s) if d in names),
            )
            for s in order
            if s in names
        ]


def _address(stage: Any, root: Path) -> str:
    """``name`` for a stage of the root ``dvc.yaml``, ``path/dvc.yaml:name`` for one of another file."""
    dvcfile = Path(stage.dvcfile.path).relative_to(root)
    return stage.name if dvcfile == Path("dvc.yaml") else f"{dvcfile.as_posix()}:{stage.name}"


class StageFailed(RuntimeError):
    """A stage's command, or DVC on its behalf, exited with an error. ``returncode`` 69 means that a
    service did not answer: worth retrying."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message, returncode)
        self.returncode = returncode

    def __str__(self) -> str:
        return self.args[0]

    @property
    def transient(self) -> bool:
        return self.returncode == ServiceUnavailable.EXIT_CODE


class RunTimedOut(TimeoutError):
    """A run took longer than ``retrain.timeout_s``."""


def _failure(about: str, what: str, returncode: int, stderr: list[str]) -> StageFailed:
    """The error of ``what`` (a command, for ``about``: ``stage NAME``) with the end of its stderr."""
    why = f"killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
    if returncode == ServiceUnavailable.EXIT_CODE:
        why += " (a service did not answer)"
    tail = "\n".join(line.rstrip() for line in stderr[-STDERR_LINES:]) or "(nothing on stderr)"
    return StageFailed(f"{about}: `{what}` {why}; its stderr ends:\n{tail}", returncode)


class CoreShares:
    """This process's CPUs dealt among the stage commands running side by side: each gets one of ``slots``
    shares (the CPUs dealt round-robin) for as long as it runs, as its CPU affinity. A stage's
    ``compute.workers: auto`` counts the CPUs it may run on (``sounding.parallel.available_cores``), so two
    stages on two cores run their fits in one process each, rather than two worker processes each on the
    same two cores: measured, four processes on two cores cost a fifth more CPU time than the same fits run
    one after another (each worker imports torch, Lightning and MLflow, and they share caches), and the
    GRU's three seeds took longer beside the FCN's than alone (docs/benchmarks.md, figure 9). Where the
    platform has no CPU affinity (macOS), stages inherit every CPU."""

    def __init__(self, slots: int) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
        shares = [set(cpus[i :: max(1, slots)]) for i in range(max(1, slots))]
        self.free = [share for share in shares if share]
        """The shares not taken: the CPUs dealt round-robin, each in one share (sizes differ by one at most)."""
        self.lock = threading.Lock()

    @contextmanager
    def share(self) -> Iterator[set[int] | None]:
        """A share of the CPUs for one stage, given back when it ends; ``None`` (every CPU) where there is
        no affinity or no share left (more stages at once than CPUs)."""
        with self.lock:
            taken = self.free.pop(0) if self.free else None
        try:
            yield taken
        finally:
            if taken:
                with self.lock:
                    self.free.append(taken)

    @staticmethod
    @contextmanager
    def pinned(cores: set[int] | None) -> Iterator[None]:
        """The calling thread on ``cores`` for the block (Linux: the affinity of a thread, which a process
        it starts inherits), then back on those it had."""
        if not cores:
            yield
            return
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cores)
        try:
            yield
        finally:
            os.sched_setaffinity(0, previous)


class Workspace:
    """The DVC repository a run works in: DVC's answers about it, one DVC command at a time, and the
    stage commands running in it."""

    def __init__(self, root: Path, tags: dict[str, str], force: bool = False, slots: int = 1) -> None:
        self.root, self.force = root, force
        self.cores = CoreShares(slots)
        bin_dir = Path(sys.executable).parent
        self.dvc_bin = str(bin_dir / "dvc")
        # The stages' `sounding` is this installation's (as `sounding repro` runs `dvc repro`); their MLflow
        # runs carry this flow run's tags.
        self.env = dict(
            os.environ,
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            DVC_ROOT=str(root),
            **{tracking.ORCHESTRATION_TAGS_ENV: json.dumps(tags)},
        )
        self.dvc_lock = threading.Lock()
        self.stale_at_start: set[str] = set()
        self.ran: set[str] = set()
        self.hold_fd: int | None = None
        self.running: dict[int, subprocess.Popen] = {}
        self.stopping = False

    def dvc(self, about: str, *args: str) -> str:
        """``dvc ARGS`` in the workspace, alone (under ``dvc_lock``); its stdout. ``StageFailed`` on an error,
        ``about`` (``stage NAME``) what it was for."""
        with self.dvc_lock:
            done = subprocess.run(
                [self.dvc_bin, *args], cwd=self.root, env=self.env, capture_output=True, text=True
            )
        if done.returncode != 0:
            raise _failure(about, f"dvc {' '.join(args)}", done.returncode, done.stderr.splitlines())
        return done.stdout

    def status(self, names: list[str]) -> set[str]:
        """Which of the stages ``names`` DVC finds changed (deps, params, outputs or command)."""
        return set(
            json.loads(self.dvc(f"stage {', '.join(names)}", "status", "--json", *names) or "{}")
        ) & set(names)

    def is_stale(self, stage: Stage) -> bool:
        """DVC's answer for ``stage`` now: the one of the start of the run, unless a stage it depends on
        has run since."""
        if self.force:
            return True
        if any(u in self.ran for u in stage.upstream):
            return bool(self.status([stage.name]))
        return stage.name in self.stale_at_start

    def run(self, stage: Stage, logger: Any) -> None:
        """Run ``stage``'s commands as ``dvc repro`` would, its output in the log; ``StageFailed`` when one
        fails or the run is stopping."""
        if self.stopping:
            raise StageFailed(f"stage {stage.name}: not started, the run is stopping", -signal.SIGTERM)
        for out in stage.outs:
            path = Path(out)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        with self.cores.share() as cores:
            for cmd in stage.cmd:
                self._run_command(stage, cmd, cores, logger)

    def _run_command(self, stage: Stage, cmd: str, cores: set[int] | None, logger: Any) -> None:
        """One of ``stage``'s commands, on ``cores`` (``None``: this process's), its output in the log."""
        logger.info("> %s%s", cmd, f"  (CPUs {sorted(cores)})" if cores else "")
        with self.cores.pinned(cores):  # the command inherits this thread's CPU affinity
            proc = subprocess.Popen(
                cmd,
                shell=True,
                cwd=stage.wdir,
                env=dict(self.env, DVC_STAGE=stage.name),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # its own process group: stopped as a whole, and Ctrl-C goes to the flow
                pass_fds=(self.hold_fd,) if self.hold_fd is not None else (),
            )
        self.running[proc.pid] = proc
        if self.stopping:  # `stop` began while this one started: it may not have seen it
            _signal_group(proc, signal.SIGTERM)
        try:
            stderr = _forward(proc, logger)
        finally:
            self.running.pop(proc.pid, None)
        if proc.returncode != 0:
            raise _failure(f"stage {stage.name}", cmd, proc.returncode, stderr)

    def stop(self, logger: Any) -> None:
        """Stop every stage command still running (the run timed out, was cancelled or interrupted):
        SIGTERM to its process group, so that it closes its MLflow runs as KILLED, then SIGKILL."""
        self.stopping = True
        procs = list(self.running.values())
        for proc in procs:
            logger.warning("stopping `%s` (PID %d)", proc.args, proc.pid)
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()

    @contextmanager
    def held(self, logger: Any, command: str, poll_s: float = 2.0) -> Iterator[None]:
        """Hold the workspace for the run (``sounding.repro``'s lock), waiting while another Sounding run,
        a stage command run by hand or a DVC command holds it."""
        (self.root / ".dvc" / "tmp").mkdir(exist_ok=True)
        waiting_for = ""
        while True:
            try:
                fd = hold_workspace(self.root, command)
            except BadInput as busy:
                fd, reason = None, str(busy)
            else:
                try:
                    check_workspace_free(self.root)
                    break
                except BadInput as busy:
                    os.close(fd)
                    reason = str(busy)
            if reason != waiting_for:
                logger.warning("waiting for the workspace: %s", reason.partition(": wait for it")[0])
                waiting_for = reason
            time.sleep(poll_s)
        self.hold_fd = fd
        try:
            yield
        finally:
            self.hold_fd = None
            os.close(fd)


def _forward(proc: subprocess.Popen, logger: Any) -> list[str]:
    """Log a command's output line by line until it exits; the last lines of its stderr."""
    tail: deque[str] = deque(maxlen=STDERR_LINES)

    def read_stderr() -> None:
        for line in proc.stderr:
            tail.append(line)
            logger.info("%s", line.rstrip())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    for line in proc.stdout:
        logger.info("%s", line.rstrip())
    proc.wait()
    reader.join()
    return list(tail)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a stage whose command said that a service did not answer (exit 69), nothing else."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, StageFailed) and error.transient


@task(task_run_name="{stage.name}", cache_policy=NO_CACHE, retry_condition_fn=_transient)
def run_stage(stage: Stage, workspace: Workspace) -> Any:
    """Run ``stage`` if DVC finds it stale, then record it in ``dvc.lock``; a ``Skipped`` state if not."""
    logger = get_run_logger()
    if not workspace.is_stale(stage):
        logger.info("%s: up to date (DVC found nothing changed), skipped", stage.name)
        return Completed(name="Skipped", message="up to date")
    logger.info("%s: started", stage.name)
    start = time.monotonic()
    try:
        workspace.run(stage, logger)
        workspace.dvc(f"stage {stage.name}", "commit", "--force", stage.name)
    except StageFailed:
        logger.error("%s: failed after %.1f s", stage.name, time.monotonic() - start)
        raise
    workspace.ran.add(stage.name)
    wall = time.monotonic() - start
    logger.info("%s: done in %.1f s, recorded in dvc.lock", stage.name, wall)
    return Completed(message=f"ran in {wall:.1f} s")


@flow(name="pipeline")
def run_pipeline(
    root: str, retrain: dict[str, Any], targets: list[str] | None, force: bool, tags: dict[str, str]
) -> dict[str, str]:
    """The stages of ``dvc.yaml`` in the workspace ``root`` (with ``targets``: those and their upstream),
    at most ``retrain.max_workers`` at once, each once the stages it depends on have ended; ``force`` runs
    every one.

    Returns each stage's final state: ``Completed`` (ran), ``Skipped`` (DVC: up to date), ``Failed``, or
    ``NotReady`` (a stage it depends on failed). ``retrain``: the ``retrain`` params, as a dict (a flow's
    parameters are plain types: a deployment loads this file as a module with no importable name, where
    Prefect could not resolve a class annotation)."""
    logger = get_run_logger()
    settings = RetrainParams.model_validate(retrain)
    workspace = Workspace(Path(root), tags, force, slots=settings.max_workers)
    stage_task = run_stage.with_options(
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_delay_s)
        if settings.retries
        else 0,
    )
    with workspace.held(logger, f"sounding retrain (Prefect flow, PID {os.getpid()})"):
        stages = pipeline(workspace.root, targets)
        names = [s.name for s in stages]
        logger.info(
            "%d stage(s), at most %d at once, in dependency order: %s",
            len(stages),
            settings.max_workers,
            ", ".join(names),
        )
        if not force:
            workspace.stale_at_start = workspace.status(names)
        with ThreadPoolTaskRunner(max_workers=settings.max_workers) as runner:
            try:
                futures = _submit_when_ready(stages, runner, stage_task, workspace, settings.max_workers)
            finally:
                workspace.stop(logger)
    return _outcome(futures, logger)


def _submit_when_ready(
    stages: list[Stage], runner: Any, stage_task: Any, workspace: Workspace, slots: int
) -> dict:
    """Submit a stage when a slot is free (``slots`` at once) and every stage it depends on has ended: the
    first ready in ``stages`` order, chosen when the slot frees (stages submitted ahead would wait in the
    runner's queue in the order they became ready, so the pretrain → transfer chain, ready late, would start
    last), so that a worker never sits waiting while another stage could run; wait for them all, in short
    waits, so that a timeout or a cancellation lands at once. The futures, by stage."""
    futures: dict[str, Any] = {}
    waiting, ended = list(stages), set()
    running: dict[concurrent.futures.Future, str] = {}
    while waiting or running:
        ready = [s for s in waiting if ended.issuperset(s.upstream)]
        for stage in ready[: max(0, slots - len(running))]:
            upstream = [futures[u] for u in stage.upstream]  # ended; a failed one makes this one NotReady
            future = runner.submit(stage_task, {"stage": stage, "workspace": workspace}, wait_for=upstream)
            futures[stage.name], running[future.wrapped_future] = future, stage.name
            waiting.remove(stage)
        if not running:
            raise RuntimeError(f"stages waiting for stages not in the run: {[s.name for s in waiting]}")
        done, _ = concurrent.futures.wait(running, timeout=1.0, return_when="FIRST_COMPLETED")
        for finished in done:
            name = running.pop(finished)
            futures[name].wait()  # records the task's final state in its future
            ended.add(name)
    return futures


def _outcome(futures: dict[str, Any], logger: Any) -> dict[str, str]:
    """Each stage's state name; raises the first failed stage's error once every stage has ended."""
    states = {name: future.state for name, future in futures.items()}
    ran = [n for n, s in states.items() if s.is_completed() and s.name != "Skipped"]
    logger.info("%d stage(s) ran (%s), %d up to date", len(ran), ", ".join(ran) or "none",
                sum(s.name == "Skipped" for s in states.values()))  # fmt: skip
    for name, state in states.items():
        if state.is_failed():
            logger.error("%s failed: %s", name, state.message)
        elif not state.is_final():
            logger.warning("%s not run: a stage it depends on failed", name)
    for future in futures.values():
        if future.state.is_failed():
            future.result()  # raises the stage's error
    return {name: state.name for name, state in states.items()}


def load(params_path: str | Path, archs: list[str] | None = None) -> RetrainParams:
    """The ``retrain`` params of a run; ``BadInput`` before any work for bad params or architectures.

    ``max_workers`` comes bounded by ``compute.workers``, which bounds the processes working side by side:
    with ``compute.workers: 1`` the stages run one at a time, as under ``dvc repro``."""
    params = load_params(params_path)
    unknown = sorted(set(archs or []) - set(ARCHS))
    if unknown or archs == []:
        raise BadInput(f"unknown architecture(s) {unknown or archs}; allowed: {', '.join(ARCHS)}")
    return params.retrain.model_copy(update={"max_workers": n_workers(params, params.retrain.max_workers)})


def workspace_root(params_path: str | Path) -> Path:
    """The DVC repository whose pipeline a run retrains: the one holding ``params_path``, which must be
    its ``params.yaml`` (the file its stages read)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    path = Path(params_path).resolve()
    try:
        root = Path(Repo.find_root(str(path.parent)))
    except NotDvcRepoError:
        raise BadInput(f"{path.parent} is not inside a DVC repository (no .dvc folder)") from None
    if path != root / "params.yaml":
        raise BadInput(
            f"the stages of {root / 'dvc.yaml'} read {root / 'params.yaml'}: retrain with that file, not {path}"
        )
    return root


LEADERBOARD = Path("reports/leaderboard.md")
"""The report stage's leaderboard, relative to the workspace: a successful run's Prefect artifact."""


def notifier(target: str) -> Any:
    """The Prefect notification block ``retrain.notify`` names: for a URL, a Custom Webhook block posting
    ``{"subject", "text"}`` JSON; for ``TYPE/NAME``, the block saved in Prefect under that name."""
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if target.startswith(("http://", "https://")):
        return CustomWebhookNotificationBlock(
            name="sounding-retrain", url=target, json_data={"subject": "{{subject}}", "text": "{{body}}"}
        )
    return Block.load(target)


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """The ``retrain`` flow's hook on a failed or crashed run: tell ``retrain.notify`` which run, where, and
    why (the failed stage and the end of its stderr, or the timeout)."""
    from prefect.settings import get_current_settings

    params_path = flow_run.parameters.get("params_path", "params.yaml")
    try:
        target = load(params_path).notify
    except BadInput:  # the run failed on its params: there is no target to read
        return
    if not target:
        return
    where = Path(params_path).resolve().parent
    body = f"Sounding retrain run '{flow_run.name}' ({flow_run.id}) in {where}: {state.name}. {state.message}"
    ui = get_current_settings().ui_url
    if ui:
        body += f"\n{ui}/runs/flow-run/{flow_run.id}"
    notifier(target).notify(body, subject=f"Sounding retrain {flow_run.name}: {state.name}")
    get_run_logger().info("told %s that the run %s", target, state.name.lower())


def publish_leaderboard(root: Path) -> None:
    """The leaderboard as the markdown artifact ``leaderboard`` of this flow run (its image dropped: the
    Prefect UI cannot reach the workspace's files)."""
    from prefect.artifacts import create_markdown_artifact

    path = root / LEADERBOARD
    if not path.exists():
        get_run_logger().warning("no %s to publish: the pipeline has no report stage", LEADERBOARD)
        return
    lines = [line for line in path.read_text().splitlines() if not line.startswith("![")]
    create_markdown_artifact(
        "\n".join(lines), key="leaderboard", description=f"Leaderboard of {root} after this run"
    )


@flow(name="retrain", on_failure=[notify_failure], on_crashed=[notify_failure])
def retrain(
    params_path: str = "params.yaml", archs: list[str] | None = None, force: bool = False
) -> dict[str, str]:
    """Retrain what changed in the DVC workspace of ``params_path``: the stages of its ``dvc.yaml`` that DVC
    finds stale, through DVC (module docstring), within ``retrain.timeout_s``. ``archs``: only the stages
    ``train@ARCH`` and the stages they depend on. ``force``: every stage, stale or not.

    Returns each stage's final state (``Skipped`` when DVC found it up to date). A failed stage fails the
    run once every stage that does not depend on it has ended."""
    retrain_params = load(params_path, archs)
    root = workspace_root(params_path)
    stages = run_pipeline.with_options(timeout_seconds=retrain_params.timeout_s)
    targets = [f"train@{arch}" for arch in archs] if archs else None
    try:
        states = stages(str(root), retrain_params.model_dump(), targets, force, tracking.orchestration_tags())
    except TimeoutError as exc:  # the subflow's: say so, rather than Prefect's "timeout of None second(s)"
        raise RunTimedOut(
            f"the run took longer than retrain.timeout_s ({retrain_params.timeout_s:g} s); "
            "the stage commands still running were stopped"
        ) from exc
    publish_leaderboard(root)
    return states
