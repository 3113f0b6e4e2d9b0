"""`sounding repro` (`make run`): refused at once, with our message, while another DVC command holds the
workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_a_second_pipeline_run_started_at_once_is_refused_by_the_first_s_hold(tmp_path: Path) -> None:
    import os

    from sounding.errors import BadInput
    from sounding.repro import hold_workspace

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    first = hold_workspace(tmp_path, "sounding repro train@cnn")  # kept by its dvc process after execve
    try:
        assert os.get_inheritable(first)
        result = run_cli("repro", cwd=tmp_path)  # the same second: before the first's DVC takes its locks
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"another Sounding command is writing in {tmp_path} (PID {os.getpid()}: sounding repro" in (
            result.stderr
        )
        with pytest.raises(BadInput, match="another Sounding command is writing"):
            hold_workspace(tmp_path, "sounding repro")
    finally:
        os.close(first)
    os.close(hold_workspace(tmp_path, "sounding repro"))  # released with its process (here: closed)


def test_a_stage_command_by_hand_is_refused_while_a_pipeline_run_writes(tmp_path: Path) -> None:
    import os

    from sounding.repro import hold_for_command, hold_workspace

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    run = hold_workspace(tmp_path, "sounding repro")
    try:
        result = run_cli("train", "cnn", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"a pipeline run (PID {os.getpid()}: sounding repro) is writing in {tmp_path}" in result.stderr
        assert "`sounding train cnn` would write the same outputs" in result.stderr
        # The same command run by DVC, for that pipeline run, goes on (here: to its missing data).
        by_dvc = run_cli("train", "cnn", cwd=tmp_path, env={"DVC_STAGE": "train@cnn"})
        assert by_dvc.returncode == 2 and "pipeline run" not in by_dvc.stderr
    finally:
        os.close(run)
    held = hold_for_command("sounding train cnn", tmp_path)  # and the other way round
    try:
        result = run_cli("repro", cwd=tmp_path)
        assert result.returncode == 2 and "another Sounding command is writing" in result.stderr
    finally:
        os.close(held)
