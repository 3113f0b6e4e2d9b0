"""Shared fixtures: tiny params and data, each test in its own working folder with its own MLflow store.

Like lightning-hydra-template's conftest, the real config is shrunk (few epochs, one seed) rather than
replaced, so tests exercise the same code paths as `make run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import chdir, closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sounding.config import Params

REPO = Path(__file__).resolve().parents[1]
SOUNDING = str(Path(sys.executable).parent / "sounding")


def ctrl_c_restored() -> None:
    """``preexec_fn`` for a command a test interrupts with SIGINT. The test process may ignore SIGINT: started
    in the background by a non-interactive shell, or after a fit in it was interrupted (Lightning's
    ``_call_and_handle_interrupt`` then ignores SIGINT for good). Children inherit that, and Python then
    never raises KeyboardInterrupt: the command would run on as if Ctrl-C had not been pressed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME")
"""Variables that would replace the ``tracking.*`` params of a test's commands."""


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store (``mlflow.db``), created once per pytest worker.

    Creating a store runs MLflow's schema migrations (about 2 s of CPU), which 64 tests paid each
    (docs/benchmarks.md, "The test suite"). Tests start from a copy instead; those about a store that does
    not exist yet are marked ``fresh_store``."""
    from sounding import tracking

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    with chdir(path.parent):  # MLflow places the Default experiment's artifacts in ./mlruns
        tracking.client(f"sqlite:///{path}").search_experiments()
    return path


def _seed_store(empty: Path, folder: Path) -> Path:
    """Copy ``empty`` to ``folder/mlflow.db``, as if MLflow had created it there: the Default experiment's
    artifact location is the absolute ``mlruns`` folder of where the store was created."""
    import sqlite3

    path = folder / "mlflow.db"
    with closing(sqlite3.connect(empty)) as source, closing(sqlite3.connect(path)) as copy:
        source.backup(copy)
        copy.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
            (str(empty.parent), str(folder)),
        )
        copy.commit()
    return path


@pytest.fixture(autouse=True)
def _isolated(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every test runs in its own folder, with an empty MLflow store (``mlflow.db``) unless it is marked
    ``fresh_store``; nothing reaches beyond 127.0.0.1. ``mlflow.set_tracking_uri`` exports
    ``MLFLOW_TRACKING_URI`` to the process's environment, so a test's store would otherwise reach the
    commands of the next test in this worker (a module's end-to-end fixture runs before this one)."""
    monkeypatch.chdir(tmp_path)
    for name in MLFLOW_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    store = None
    if request.node.get_closest_marker("fresh_store") is None:
        store = _seed_store(request.getfixturevalue("_empty_store"), tmp_path)
        seeded = store.stat().st_mtime_ns
    yield
    for name in MLFLOW_VARIABLES:
        os.environ.pop(name, None)
    # A store the test never opened (no write-ahead log beside it) goes: pytest keeps the last runs' folders.
    if (
        store
        and store.exists()
        and store.stat().st_mtime_ns == seeded
        and not store.with_name("mlflow.db-wal").exists()
    ):
        store.unlink()


FIGURES: Counter[str] = Counter()
"""What the reliability tests exercised in this session (faults injected, bad inputs tried, runs and
trials checked), printed at the end of the run as one ``reliability figures:`` line."""


@pytest.fixture
def figures() -> Counter[str]:
    """Add to a figure: ``figures["faults injected"] += 1``."""
    return FIGURES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tier's files first (a stable sort), when both tiers run in one session (``make test``):
    the long end-to-end files start early and the short fast-tier files fill in after them, so the
    workers finish together instead of one waiting for the other's last long file."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: hand the figures to the controller
        session.config.workeroutput["figures"] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: pytest without xdist would reject it
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist, on the controller: add a finished worker's figures."""
    FIGURES.update(getattr(node, "workeroutput", {}).get("figures", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        shown = ", ".join(f"{name} {count}" for name, count in sorted(FIGURES.items()))
        terminalreporter.write_line(f"reliability figures: {shown}")


def tiny_params(**overrides: object) -> Params:
    """Defaults shrunk to seconds: a 600-sample MNIST-1D, 3 epochs of batches of 100 (no step minimum, for
    the classifiers or the GAN), one seed, a local sqlite store, weights selected and trials ranked on its 48
    validation samples; tuning runs 3 trials of 3 epochs and confirms nothing on fresh seeds; transfer
    pretrains 2 epochs on 600 source samples and each fit is 6 steps; one process (the tests of fits side by
    side ask for more: tests/test_parallel_slow.py)."""
    base = {
        "compute.workers": 1,
        "data.mnist1d.num_samples": 600,
        "train.epochs": 3,
        "train.min_steps": 0,  # 3 epochs are the point
        "gan.min_steps": 0,
        "train.min_batches": 1,  # batches of 100, as on the full set
        "train.min_val": 10,  # the tiny set's 48 validation samples stand for a real validation part
        "train.n_seeds": 1,
        "tracking.uri": "sqlite:///mlflow.db",
        "transfer.source_data.mnist1d.num_samples": 600,
        "transfer.pretrain_epochs": 2,
        "transfer.steps": 6,
        "transfer.evals": 2,
        "tune.n_trials": 3,
        "tune.epochs": 3,
        "tune.epochs_by_arch": {},
        "tune.confirm_seeds": 0,  # adopt on the study alone (tests/test_tuning.py checks the confirmation)
    }
    base.update(overrides)
    return Params().with_overrides(base)


@pytest.fixture
def params() -> Params:
    return tiny_params()


@pytest.fixture
def prepared(params: Params, tmp_path: Path) -> Path:
    from sounding.data.prepare import prepare

    out = tmp_path / "data" / "prepared"
    prepare(params.data, params.seed, out)
    return out


def prepare_in(folder: Path, params_path: Path | None = None) -> Path:
    """``folder/data/prepared`` as `sounding prepare` in ``folder`` writes it (``folder/params.yaml`` by
    default), by the library call the command makes, in this process: a test whose subject is later
    (training, tuning, a fault) need not pay a command's start-up for its data (1–2 s of CPU each). The
    command itself is run by tests/test_cli.py, tests/data/test_sources.py and the end-to-end tests."""
    from sounding import stages
    from sounding.config import load_params

    out = folder / "data" / "prepared"
    stages.prepare(load_params(params_path or folder / "params.yaml"), out)
    return out


def write_params(path: Path, params: Params) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return path


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real `sounding` console script in a subprocess (``env``: variables added to this one's)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(
        [SOUNDING, *args], capture_output=True, text=True, cwd=cwd, env=env, check=check, timeout=600
    )


def make_npz(
    path: Path, n: int = 60, shape: tuple[int, ...] = (20,), k: int = 3, **extra: np.ndarray
) -> Path:
    """A small valid user dataset (then overridden by ``extra`` arrays to break it)."""
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(n, *shape)).astype(np.float32), "y": np.arange(n) % k}
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def copy_repo(dest: Path) -> Path:
    """A git repository holding this project's pipeline files, for end-to-end DVC runs."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "src", "data/raw"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):  # as cloned: no cache, no state
        shutil.copy(REPO / ".dvc" / name, dest / ".dvc" / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], cwd=dest, check=True
    )
    return dest


def run_dvc(
    *args: str, cwd: Path, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the venv's ``dvc`` in ``env`` (this process's by default) with the venv first on PATH (stage
    commands call ``sounding``)."""
    bin_dir = str(Path(sys.executable).parent)
    env = env if env is not None else dict(os.environ)
    env = dict(env, PATH=f"{bin_dir}:{env['PATH']}")
    return subprocess.run(
        [f"{bin_dir}/dvc", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(
    backend: str,
    folder: Path,
    *options: str,
    env: dict[str, str] | None = None,
    health: str = "/health",
    port: int | None = None,
) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on ``port`` of the loopback (a free one by default; its artifacts in
    ``folder/server-artifacts``, one worker, no job runner), yielded as (URL, its log file) once ``health``
    answers; stopped afterwards."""
    import urllib.request

    port, log = port or free_port(), folder / "mlflow-server.log"
    with open(log, "ab") as sink:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
             "--artifacts-destination", str(folder / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", *options],
            cwd=folder, env=dict(env or os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}{health}", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (with an error status: the caller checks which)
            except OSError:
                assert server.poll() is None, log.read_text()[-4000:]
                assert time.time() < deadline, "mlflow server did not become healthy"
                time.sleep(0.5)
        yield url, log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


POSTGRES = os.environ.get("SOUNDING_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
"""Server the PostgreSQL tests use (trust auth on loopback); each test gets its own fresh database."""


@pytest.fixture
def postgres_url() -> str:
    """URL of a new, empty database on ``POSTGRES``, dropped afterwards.

    Without a reachable server the test is skipped, unless ``SOUNDING_REQUIRE_POSTGRES=1`` (CI sets it),
    which makes it fail instead.
    """
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(POSTGRES)
    try:
        admin = psycopg.connect(
            host=base.host,
            port=base.port,
            user=base.username,
            dbname=base.database,
            connect_timeout=3,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL at {base.render_as_string(hide_password=True)} ({str(exc).strip()})"
        if os.environ.get("SOUNDING_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and SOUNDING_REQUIRE_POSTGRES=1")
        pytest.skip(f"{reason}; set SOUNDING_TEST_POSTGRES to a server URL to run this test")
    name = f"sounding_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database for every flow run of the session (started once: ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def cli_commands() -> dict[str, Any]:
    """Each ``sounding`` command (``schedule``, ``models promote``, …) and its Click command, read from the
    Typer app."""
    import typer

    from sounding.cli import app

    found: dict[str, Any] = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found[prefix + name] = command

    walk(typer.main.get_command(app), "")
    return found


def cli_options() -> dict[str, set[str]]:
    """Each ``sounding`` command and the option strings it takes (``--params``, ``-S``, ``--set``, …)."""
    return {
        name: {opt for param in command.params for opt in getattr(param, "opts", [])}
        for name, command in cli_commands().items()
    }


def served_predictions(model_uri: str, x: Any, cwd: Path, tracking_uri: str) -> Any:
    """``mlflow models serve`` of ``model_uri`` on a free loopback port, as a user starts it, asked over HTTP
    for the probabilities of the raw inputs ``x``; the server is stopped before returning."""
    import urllib.request

    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{bin_dir}:{os.environ['PATH']}")
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": np.asarray(x).tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        return np.array(json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
