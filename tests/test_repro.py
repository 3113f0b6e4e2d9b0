"""`sounding repro` (`make run`): refused at once, with our message, while another DVC command holds the
workspace."""

from __future__ import annotations

from pathlib import Path

from sounding.repro import check_workspace_free
from tests.conftest import run_cli


def test_repro_is_refused_with_exit_2_while_dvc_holds_the_workspace(tmp_path: Path) -> None:
    from dvc.lock import make_lock

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / "sub").mkdir()
    assert check_workspace_free(tmp_path / "sub") == tmp_path  # free: found from a subfolder
    lock = make_lock(str(tmp_path / ".dvc" / "tmp" / "lock"), tmp_dir=str(tmp_path / ".dvc" / "tmp"))
    lock.lock()  # as a running `dvc repro` holds it
    try:
        result = run_cli("repro", cwd=tmp_path)
    finally:
        lock.unlock()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"another DVC command (a `dvc repro` or `make run`, a `dvc pull`, …) is running in {tmp_path}" in (
        result.stderr
    )


def test_repro_outside_a_dvc_repository_is_bad_input(tmp_path: Path) -> None:
    result = run_cli("repro", cwd=tmp_path)
    assert result.returncode == 2 and "is not inside a DVC repository" in result.stderr
