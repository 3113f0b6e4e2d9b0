"""A service that does not answer (tracking server, tracking database, Optuna storage) stops a command at
once with exit 69 and one line naming it, before any work and with nothing written."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import prepare_in, run_cli, tiny_params, write_params

CREDENTIALS = "sounding" + ":" + "secret"  # built, so no tracked line holds a user:password URL
MASKED = "sounding" + ":***"


def _closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["train", "mlp", "-S", "tracking.uri=http://127.0.0.1:{port}"],
            "tracking server http://127.0.0.1:{port}",
        ),
        (
            ["train", "mlp", "-S", "tracking.uri=postgresql://sounding@127.0.0.1:{port}/mlflow"],
            "tracking database postgresql://sounding@127.0.0.1:{port}/mlflow",
        ),
        (
            ["tune", "mlp", "--storage", f"postgresql://{CREDENTIALS}@127.0.0.1:{{port}}/optuna"],
            f"Optuna storage postgresql://{MASKED}@127.0.0.1:{{port}}/optuna",
        ),
    ],
)
def test_a_service_that_does_not_answer_exits_69_naming_it(
    tmp_path: Path, args: list[str], named: str
) -> None:
    port = _closed_port()
    write_params(tmp_path / "params.yaml", tiny_params())
    prepare_in(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    start = time.perf_counter()
    result = run_cli(*(a.format(port=port) for a in args), cwd=tmp_path)
    assert result.returncode == 69, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named.format(port=port)} did not answer"), lines
    assert "secret" not in result.stderr
    assert time.perf_counter() - start < 60  # bounded by tracking.timeout_s, not MLflow's minutes of retries
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_ctrl_c_while_a_server_never_answers_stops_the_command_within_seconds(tmp_path: Path) -> None:
    """A server that accepts the connection and never answers holds a request for up to
    ``tracking.timeout_s``; Ctrl-C does not wait for it."""
    import signal
    import subprocess

    from tests.conftest import SOUNDING, ctrl_c_restored

    write_params(tmp_path / "params.yaml", tiny_params())
    prepare_in(tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"tracking.uri=http://127.0.0.1:{silent.getsockname()[1]}"
        command = subprocess.Popen(
            [SOUNDING, "train", "mlp", "-q", "-S", uri, "-S", "tracking.timeout_s=120"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=ctrl_c_restored,
        )
        silent.settimeout(120)
        connection, _ = silent.accept()  # the command's request has reached the server, which never answers
        with connection:
            time.sleep(1.0)
            start = time.perf_counter()
            command.send_signal(signal.SIGINT)
            _, err = command.communicate(timeout=60)
            stopped_after = time.perf_counter() - start
    assert command.returncode == 130 and "Traceback" not in err, err
    assert stopped_after < 10, stopped_after  # not the 120 s the request could still wait
