"""``sounding repro`` (what ``make run`` calls): ``dvc repro``, refused at once with a clear message while
another DVC command (a first ``dvc repro``, a ``dvc pull``) holds the workspace.

DVC already refuses a second ``dvc repro`` on one workspace, with its own errors: "Unable to acquire lock"
while the first holds the repository lock (``.dvc/tmp/lock``, between stages), or a message about
``.dvc/tmp/rwlock`` while one of its stages runs (DVC releases the repository lock then, and records the
running stage's process and paths in that file). This check looks at both the way DVC does, changes
neither, and turns a refusal into a Sounding message and exit code 2 before DVC starts. The locks are DVC's,
so nothing new can be left stale: the first is the kernel's and ends with its process, and rwlock entries of
processes that no longer exist are ignored (as DVC ignores them).

Checking, then starting DVC, leaves a moment in which a second ``sounding repro`` passes the same check
(two started in the same second). ``hold_workspace`` closes it: an exclusive ``flock`` on
``.dvc/tmp/sounding.lock``, taken before the check and kept by the ``dvc repro`` this process becomes (the
descriptor survives ``execve``) until it exits, when the kernel releases it. The same lock keeps a stage
command run by hand (``sounding train cnn`` outside DVC) from writing the outputs a pipeline run is writing,
and the other way round (``hold_for_command``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sounding.errors import BadInput

LOCK = "sounding.lock"
"""In ``.dvc/tmp``: held exclusively by a pipeline run, shared by stage commands run by hand."""

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


def _lock(root: Path, mode: int) -> tuple[int | None, str]:
    """The descriptor of ``root``'s lock file with ``mode`` (``LOCK_EX`` or ``LOCK_SH``) taken, or
    ``None`` and what its holder recorded there when another process holds it."""
    import fcntl

    fd = os.open(root / ".dvc" / "tmp" / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 500, 0).decode(errors="replace").strip()
        os.close(fd)
        return None, holder
    return fd, ""


def hold_workspace(root: Path, command: str) -> int:
    """Take the workspace of the DVC repository at ``root`` for a pipeline run (``command``, recorded for
    whoever is refused): the lock's descriptor, inheritable, so that it stays held across ``execve``.
    ``BadInput`` naming the holder when another run or a stage command holds it."""
    import fcntl

    fd, holder = _lock(root, fcntl.LOCK_EX)
    if fd is None:
        raise BadInput(
            f"another Sounding command is writing in {root} ({holder or 'a Sounding stage command'}): {WAIT}"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()}: {command}".encode(), 0)
    os.set_inheritable(fd, True)
    return fd


def hold_for_command(command: str, start: str | Path = ".") -> int | None:
    """For a stage command (``sounding train cnn``): a shared hold on the workspace, kept until the process
    ends, or ``BadInput`` naming the pipeline run that holds it. Nothing to do outside a DVC repository, or
    when DVC itself runs the command (``DVC_STAGE``: the pipeline run holds the workspace for it)."""
    import fcntl

    from sounding.files import dvc_roots

    roots = dvc_roots(Path(start))
    if os.environ.get("DVC_STAGE") or not roots:
        return None
    root = roots[0]  # the repository `dvc repro` would run here
    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    fd, holder = _lock(root, fcntl.LOCK_SH)
    if fd is None:
        raise BadInput(
            f"a pipeline run ({holder}) is writing in {root}: `{command}` would write the same outputs, and "
            f"DVC would record them under the run's params. {WAIT}"
        )
    return fd


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
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        root = Path(Repo.find_root())
    except NotDvcRepoError:
        raise BadInput(f"{Path.cwd()} is not inside a DVC repository (no .dvc folder)") from None
    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    hold_workspace(root, " ".join(["sounding repro", *args]))  # kept by dvc after execve, until it exits
    check_workspace_free(root)
    bin_dir = Path(sys.executable).parent
    dvc = bin_dir / "dvc"
    if not dvc.is_file():
        raise BadInput(f"{dvc} not found: install Sounding with its dependencies (make venv)")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    os.execve(dvc, [str(dvc), "repro", *args], env)
