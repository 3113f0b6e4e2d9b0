"""Servers with authentication on refuse anonymous requests: MLflow's basic-auth app and Prefect's
``PREFECT_SERVER_API_AUTH_STRING``. (That `make` binds every server to 127.0.0.1: tests/test_safety.py.)"""

from __future__ import annotations

import base64
import os
import secrets
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from pipelines.server import prefect_server
from tests.conftest import free_port, mlflow_server

pytestmark = pytest.mark.slow


def _status(url: str, credentials: str | None = None, data: bytes | None = None) -> int:
    """HTTP status of a GET (or a JSON POST with ``data``), with HTTP Basic ``user:password`` if given."""
    headers = {"Content-Type": "application/json"}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mlflow_basic_auth_answers_401_without_credentials(tmp_path: Path, figures: Counter[str]) -> None:
    admin_secret = secrets.token_urlsafe(16)  # made here, written nowhere tracked
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = dict(
        os.environ,
        MLFLOW_AUTH_CONFIG_PATH=str(config),
        MLFLOW_AUTH_ADMIN_PASSWORD=admin_secret,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_server(backend, tmp_path, "--app-name", "basic-auth", env=env) as (url, log):
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        anonymous, wrong = _status(search), _status(search, f"admin:{admin_secret}x")
        admin = _status(search, f"admin:{admin_secret}")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            MlflowClient(tracking_uri=url).search_experiments()  # the client without credentials
    assert (anonymous, wrong, admin) == (401, 401, 200), log.read_text()[-3000:]
    figures["requests without valid credentials refused"] += 3


def test_prefect_server_with_an_auth_string_answers_401_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Counter[str]
) -> None:
    auth = f"admin:{secrets.token_urlsafe(16)}"
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", auth)
    with prefect_server(free_port(), home=tmp_path / "prefect-home") as url:
        flows = f"{url}/flows/filter"
        anonymous, wrong = _status(flows, data=b"{}"), _status(flows, auth + "x", data=b"{}")
        right = _status(flows, auth, data=b"{}")
    assert (anonymous, wrong, right) == (401, 401, 200)
    figures["requests without valid credentials refused"] += 2
