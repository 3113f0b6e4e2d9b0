"""``sounding repro`` (what ``make run`` calls): ``dvc repro``, refused at once with a clear message while
another DVC command (a first ``dvc repro``, a ``dvc pull``) holds the workspace.

DVC already refuses a second ``dvc repro`` on one workspace, with its own "Unable to acquire lock" error;
this check takes DVC's own lock (``dvc.lock``) the way ``dvc repro`` does, releases it at once, and turns a
refusal into a Sounding message and exit code 2 before DVC starts. The lock is DVC's, so nothing new can be
left stale: it is the kernel's lock on ``.dvc/tmp/lock`` and ends with the process that held it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sounding.errors import BadInput


def check_workspace_free(start: str | Path = ".") -> Path:
    """The DVC repository holding ``start``; ``BadInput`` when there is none or another DVC process holds
    it (DVC's own lock, tried for the few seconds ``dvc`` itself waits)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.lock import LockError, make_lock
    from dvc.repo import Repo

    try:
        root = Path(Repo.find_root(str(start)))
    except NotDvcRepoError:
        raise BadInput(f"{Path(start).resolve()} is not inside a DVC repository (no .dvc folder)") from None
    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    lock = make_lock(str(tmp / "lock"), tmp_dir=str(tmp))
    try:
        lock.lock()
    except LockError:
        raise BadInput(
            f"another DVC command (a `dvc repro` or `make run`, a `dvc pull`, …) is running in {root}: "
            "wait for it to finish, then run again. Two runs at once would write the same outputs, so the "
            "second is refused; nothing was changed."
        ) from None
    lock.unlock()
    return root


def repro(args: list[str]) -> None:
    """Check the workspace is free, then become ``dvc repro ARGS`` (same output, same exit code)."""
    check_workspace_free()
    dvc = shutil.which("dvc")
    if dvc is None:
        raise BadInput("dvc not found on PATH: activate the environment (source .venv/bin/activate)")
    os.execv(dvc, [dvc, "repro", *args])
