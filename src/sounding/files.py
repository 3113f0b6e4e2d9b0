"""Small file helpers: content hashes, atomic writes, outputs published together, and reading the stages'
results.

Every output is written to a temporary file in the same folder and renamed into place, so a process
killed mid-write leaves either the old file or the new one, never a truncated file; a stage's several
outputs are written beside them and swapped in together (``published_together``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def dvc_roots(start: Path) -> list[Path]:
    """The DVC repositories holding ``start`` (folders with a ``.dvc``), nearest first."""
    here = start.resolve()
    return [p for p in (here, *here.parents) if (p / ".dvc").is_dir()]


def check_writable(*paths: str | Path) -> None:
    """``BadInput`` before any work when an output (a file or folder to write) cannot be written: a file
    stands where a folder must be, or this process may not write into the folder that would hold it."""
    from sounding.errors import BadInput

    for path in map(Path, paths):
        existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
        if existing != path and not existing.is_dir():
            raise BadInput(f"{path}: cannot be written: {existing} is a file, where a folder must be")
        folder = existing if existing.is_dir() else existing.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadInput(f"{path}: cannot be written: no permission to write in {folder}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (atomic on POSIX).

    ``fsync=False`` skips forcing the bytes to disk before the rename: still never a torn file after a
    killed process, but the newest version may be lost on a power cut (for per-epoch checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates the file 0600 whatever the umask; the output gets the mode any tool would give it
    # (0644 under umask 022), so teammates sharing a workspace or a DVC cache can read it.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        write(Path(tmp))
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def published_together(*outputs: str | Path, enabled: bool = True) -> Iterator[tuple[Path, ...]]:
    """Stand-ins for ``outputs`` (files or folders), to be written instead of them and published together.

    When the block ends without error, each output is replaced by its stand-in (removed when nothing was
    written there), by renames within its own folder; when the block raises (a full disk, a failed write,
    Ctrl-C) or a rename fails, the stand-ins are removed and every output is left as it was: nobody finds
    one output from a new run beside another from an old one. Stand-ins are ``.NAME.partial`` beside each
    output (the workspace has one writer: ``repro.hold``); one a killed process left is removed by the next.
    ``enabled=False``, for a process that writes nothing (a DDP rank other than zero), yields the outputs
    themselves and publishes nothing.
    """
    paths = tuple(Path(p) for p in outputs)
    if not enabled:
        yield paths
        return
    partial = tuple(p.parent / f".{p.name}.partial" for p in paths)
    previous = tuple(p.parent / f".{p.name}.previous" for p in paths)
    for leftover in (*partial, *previous):
        _remove(leftover)
    try:
        yield partial
        swapped: list[tuple[Path, Path, bool]] = []
        try:
            for out, new, old in zip(paths, partial, previous, strict=True):
                out.parent.mkdir(parents=True, exist_ok=True)
                existed = os.path.lexists(out)
                if existed:
                    os.rename(out, old)
                swapped.append((out, old, existed))
                if os.path.lexists(new):
                    os.rename(new, out)
        except BaseException:
            for out, old, existed in reversed(swapped):  # put the old outputs back
                _remove(out)
                if existed:
                    os.rename(old, out)
            raise
    finally:
        for leftover in partial:
            _remove(leftover)
    for old in previous:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _umask() -> int:
    """This process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief window, for other threads)
    os.umask(mask)
    return mask


def write_json(path: str | Path, payload: Any) -> Path:
    """Write pretty, key-sorted JSON atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_folder(folder: str | Path, payloads: dict[str, Any]) -> Path:
    """Write ``folder/NAME.json`` for each of ``payloads`` (each atomically) and remove the folder's other
    ``.json`` files, so the folder holds exactly this run's files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        write_json(folder / f"{name}.json", payload)
    for stale in set(folder.glob("*.json")) - {folder / f"{name}.json" for name in payloads}:
        stale.unlink()
    return folder


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_results(results_dir: str | Path, archs: list[str]) -> list[dict]:
    """``results_dir/ARCH.json`` of each of ``archs``: what ``sounding train`` recorded."""
    from sounding.errors import BadInput

    rows = []
    for arch in archs:
        path = Path(results_dir) / f"{arch}.json"
        if not path.is_file():
            raise BadInput(f"{path} not found: run `sounding train {arch}` first")
        rows.append(json.loads(path.read_text()))
    return rows
