"""A local Prefect server on 127.0.0.1, for ``make scheduler``, the slow tests and the overhead benchmark.

``python -m pipelines.server --port 4200 -- COMMAND …`` starts ``prefect server start``, waits until its API
answers, runs COMMAND with ``PREFECT_API_URL`` pointing at it, and stops the server when COMMAND ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def prefect_server(port: int, home: Path | None = None, timeout_s: float = 90.0) -> Iterator[str]:
    """Run ``prefect server start`` on 127.0.0.1:``port`` (its database in ``home``, default
    ``PREFECT_HOME``) and yield its API URL once healthy; stop it on exit."""
    # The UI finds the API through PREFECT_SERVER_API_HOST/PORT (its PREFECT_UI_API_URL default), which
    # `--host`/`--port` do not set: on another port than 4200 the UI would call 4200 and show nothing.
    env = dict(
        os.environ,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_UI_API_URL", None)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        )
    log_dir = home or Path(".sounding")
    log_dir.mkdir(parents=True, exist_ok=True)
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(log_dir / "prefect-server.log", "ab") as log:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the command, not the server: stopped below, in order
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, server, timeout_s, log_dir / "prefect-server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Poll ``url/health`` until it answers; fail with the server's log when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server at {url} did not answer within {timeout_s:.0f} s; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND to run against the server")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    with prefect_server(args.port) as url:
        print(f"Prefect server: {url.removesuffix('/api')} (UI)", flush=True)
        proc = subprocess.Popen(command, env=dict(os.environ, PREFECT_API_URL=url))
        # SIGTERM (kill, systemd, a container stopping) ends the command, then the server, as Ctrl-C does:
        # its default action would end this process at once and leave the server running on its port.
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
