"""``sounding repro`` (what ``make run`` calls): ``dvc repro``, refused at once with a clear message while
another DVC command (a first ``dvc repro``, a ``dvc pull``) holds the workspace.

DVC already refuses a second ``dvc repro`` on one workspace, with its own errors: "Unable to acquire lock"
while the first holds the repository lock (``.dvc/tmp/lock``, between stages), or a message about
``.dvc/tmp/rwlock`` while one of its stages runs (DVC releases the repository lock then, and records the
running stage's process and paths in that file). This check looks at both the way DVC does, changes
neither, and turns a refusal into a Sounding message and exit code 2 before DVC starts. The locks are DVC's,
so nothing new can be left stale: the first is the kernel's and ends with its process, and rwlock entries of
processes that no longer exist are ignored (as DVC ignores them).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sounding.errors import BadInput

WAIT = (
    "wait for it to finish, then run again. Two runs at once would write the same outputs, so the second "
    "is refused; nothing was changed."
)


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
            f"another DVC command (a `dvc repro` or `make run`, a `dvc pull`, …) is running in {root}: {WAIT}"
        ) from None
    lock.unlock()
    running = _stage_holders(tmp / "rwlock")
    if running:
        raise BadInput(f"another DVC command is running a stage in {root} ({'; '.join(running)}): {WAIT}")
    return root


def _stage_holders(rwlock: Path) -> list[str]:
    """``PID …: command`` of the live processes DVC's rwlock file records as reading or writing paths."""
    import psutil

    try:
        entries = json.loads(rwlock.read_text())
    except (OSError, ValueError):  # none (no stage ran yet), or being rewritten: DVC itself still checks
        return []
    infos = list(entries.get("write", {}).values())
    infos += [info for readers in entries.get("read", {}).values() for info in readers]
    live = {
        f"PID {i['pid']}: {i['cmd']}"
        for i in infos
        if i.get("pid") != os.getpid() and psutil.pid_exists(i.get("pid", -1))
    }
    return sorted(live)


def repro(args: list[str]) -> None:
    """Check the workspace is free, then become ``dvc repro ARGS`` (same output, same exit code), with this
    environment's ``bin`` first on PATH so that the stages' ``sounding`` commands are this installation's."""
    check_workspace_free()
    bin_dir = Path(sys.executable).parent
    dvc = bin_dir / "dvc"
    if not dvc.is_file():
        raise BadInput(f"{dvc} not found: install Sounding with its dependencies (make venv)")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    os.execve(dvc, [str(dvc), "repro", *args], env)
