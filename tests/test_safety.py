"""Static guarantees over the tracked source: no unpickling loaders, no secrets, servers on loopback."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO


def _tracked(*suffixes: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / n for n in names.splitlines() if n.endswith(suffixes) and (REPO / n).is_file()]


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_no_code_unpickles_a_file() -> None:
    """``torch.load`` only with ``weights_only=True``; no ``pickle.load``/``loads``; ``np.load`` without
    ``allow_pickle=True``. Checked on every tracked Python file, tests included."""
    offences = []
    for path in _tracked(".py"):
        for call in _calls(ast.parse(path.read_text(), str(path))):
            name, kw = _name(call.func), {k.arg: k.value for k in call.keywords}
            where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
            if name.endswith("torch.load") or name == "load" and "weights_only" in kw:
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offences.append(where)
            if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load"):
                offences.append(where)
            if name.endswith("np.load") and isinstance(kw.get("allow_pickle"), ast.Constant):
                if kw["allow_pickle"].value is True:
                    offences.append(where)
    assert not offences, f"calls that can unpickle: {offences}"


SECRET = re.compile(
    r"(?ix)"
    r"(://[^/\s:@]+:[^/\s@]+@)"  # user:password@ in a URL
    r"|(aws_secret_access_key|secret_key|api_key|access_token|password)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}"
    r"|(AKIA[0-9A-Z]{16})"  # an AWS access key id
)


def test_no_credentials_in_tracked_files() -> None:
    offences = []
    for path in _tracked(
        ".py", ".yaml", ".yml", ".toml", ".md", ".cfg", ".sh", ".sbatch", "config", "Makefile"
    ):
        for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if SECRET.search(line) and "example" not in line.lower() and "USER:PASS" not in line:
                offences.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert not offences, offences


def test_local_dvc_config_is_git_ignored() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO, capture_output=True, check=False
    )
    assert result.returncode == 0


def test_servers_started_by_make_bind_to_loopback() -> None:
    makefile = (REPO / "Makefile").read_text()
    commands = [
        line for line in makefile.splitlines() if re.search(r"\b(mlflow (ui|server)|prefect server)", line)
    ]
    assert commands, "no server target found"
    for line in commands:
        block = makefile[makefile.index(line) : makefile.index(line) + 400]
        assert "--host 127.0.0.1" in block or "--host $(HOST)" in block, line
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.M) or "--host $(HOST)" not in makefile


def test_outputs_follow_the_umask_like_any_other_tool(tmp_path: Path) -> None:
    import os

    from sounding.files import write_json

    previous = os.umask(0o022)
    try:
        assert write_json(tmp_path / "shared.json", {"a": 1}).stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert write_json(tmp_path / "private.json", {"a": 1}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
