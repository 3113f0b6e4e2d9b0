"""The tiny params the flow runs on, small DVC repositories whose stages are shell one-liners, and a
webhook receiver (the Prefect test server is tests/conftest.py's ``prefect_harness``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sounding.config import Params
from tests.conftest import REPO, tiny_params, write_params


def flow_params(**overrides: object) -> Params:
    """``tiny_params`` shrunk further for whole-pipeline runs: two architectures, two tuning trials of two
    epochs, transfer of the MLP at two budgets, a small depth study and GAN; retries without delay."""
    base = {
        "train.archs": ["linear", "cnn"],
        "train.epochs": 2,
        "tune.n_trials": 2,
        "tune.epochs": 2,
        "transfer.archs": ["mlp"],
        "transfer.budgets": [0.5, 1.0],
        "depth.depths": [2],
        "depth.inits": ["default"],
        "depth.residual": [False],
        "depth.clip": [0.0],
        "depth.epochs": 1,
        "gan.epochs": 1,
        "gan.samples_per_class": 2,
        "retrain.retry_delay_s": 0,
    }
    base.update(overrides)
    return tiny_params(**base)


def dvc_repo(root: Path, stages: dict, params: Params | None = None) -> Path:
    """A git + DVC repository at ``root`` (this project's DVC config) whose dvc.yaml holds ``stages``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    write_params(root / "params.yaml", params or flow_params())
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


@pytest.fixture
def webhook() -> tuple[str, list[dict]]:
    """A webhook receiver on 127.0.0.1: its URL, and the JSON bodies posted to it."""
    posted: list[dict] = []

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", posted
    server.shutdown()
