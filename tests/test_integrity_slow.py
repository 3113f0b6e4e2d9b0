"""Data integrity end to end: a corrupted DVC cache or remote, and a `prepare` killed mid-write, never feed
wrong bytes to training."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sounding.data.prepare import load_prepared, prepare
from sounding.errors import BadInput
from tests.conftest import SOUNDING, copy_repo, run_cli, run_dvc, tiny_params, write_params

pytestmark = pytest.mark.slow


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _flip_a_byte(path: Path) -> None:
    path.chmod(0o644)  # DVC keeps cache and remote objects read-only
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def _object(store: Path, file: Path) -> Path:
    """Where DVC 3 keeps ``file``'s bytes in a cache or local remote: ``files/md5/AB/CDEF…``."""
    md5 = hashlib.md5(file.read_bytes()).hexdigest()
    return store / "files" / "md5" / md5[:2] / md5[2:]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC workspace of this project, its `prepare` stage reproduced on tiny params."""
    root = copy_repo(tmp_path / "repo")
    write_params(root / "params.yaml", tiny_params(**{"train.archs": ["mlp"], "gan.judge": "mlp"}))
    result = run_dvc("repro", "prepare", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_a_corrupted_dvc_cache_object_checked_out_is_refused_before_training(
    repo: Path, figures: Counter[str]
) -> None:
    prepared = repo / "data" / "prepared"
    _flip_a_byte(_object(repo / ".dvc" / "cache", prepared / "train.npz"))
    figures["faults injected"] += 1
    subprocess.run(["rm", "-rf", str(prepared)], check=True)
    checkout = run_dvc("checkout", cwd=repo)  # DVC copies the cached bytes back without re-hashing them
    assert (prepared / "manifest.json").is_file(), checkout.stdout + checkout.stderr

    result = run_cli("train", "mlp", "-q", cwd=repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.npz does not match its manifest: sha256 is" in result.stderr
    assert (
        not (repo / "mlflow.db").exists() and not (repo / "checkpoints").exists()
    )  # refused before any work
    assert not [p for p in (repo / "models").rglob("*") if p.is_file()]


def test_a_corrupted_object_in_a_verifying_remote_never_reaches_the_workspace(
    repo: Path, tmp_path: Path, figures: Counter[str]
) -> None:
    """With ``verify = true`` DVC re-hashes what it downloads and drops a corrupted object. A workspace
    that has its data keeps it byte for byte; one that lacks it (a fresh clone) gets a failed pull and no
    data, which training refuses. Without ``verify`` the corrupted bytes land, and our sha256 check refuses
    them."""
    remote = tmp_path / "remote"
    for args in (("remote", "add", "--local", "-d", "store", str(remote)),
                 ("remote", "modify", "--local", "store", "verify", "true"), ("push",)):  # fmt: skip
        result = run_dvc(*args, cwd=repo)
        assert result.returncode == 0, result.stderr
    prepared, cache = repo / "data" / "prepared", repo / ".dvc" / "cache"
    corrupted = _object(remote, prepared / "train.npz")
    _flip_a_byte(corrupted)
    figures["faults injected"] += 1
    before = _digests(prepared)

    subprocess.run(["rm", "-rf", str(cache)], check=True)  # pull must download everything
    assert run_dvc("pull", "prepare", cwd=repo).returncode == 0  # nothing to change in the workspace
    assert _digests(prepared) == before and not (cache / corrupted.relative_to(remote)).exists()

    subprocess.run(["rm", "-rf", str(cache), str(prepared)], check=True)  # a fresh clone
    pulled = run_dvc("pull", "prepare", cwd=repo)
    assert pulled.returncode != 0 and "Checkout failed" in pulled.stderr, pulled.stdout + pulled.stderr
    assert not (prepared / "train.npz").exists()
    refused = run_cli("train", "mlp", "-q", cwd=repo)
    assert refused.returncode == 2 and "run `sounding prepare` first" in refused.stderr

    assert run_dvc("remote", "modify", "--local", "store", "verify", "false", cwd=repo).returncode == 0
    assert run_dvc("pull", "prepare", cwd=repo).returncode == 0  # the control: unverified, it lands
    assert _digests(prepared)["train.npz"] != before["train.npz"]
    refused = run_cli("train", "mlp", "-q", cwd=repo)
    assert refused.returncode == 2 and "train.npz does not match its manifest" in refused.stderr


def _killed_prepare(root: Path, rng: random.Random) -> bool:
    """Start `sounding prepare`, wait until it starts writing one of its files (picked at random), and
    SIGKILL it a random moment later; return whether a write was in progress (a new temporary file there)
    at the kill."""
    out = root / "data" / "prepared"
    left = set(out.glob(".*.tmp"))  # earlier killed writes' leftovers; this run removes them
    target = f".{rng.choice(['train', 'val', 'test'])}.npz.*.tmp"
    proc = subprocess.Popen(
        [SOUNDING, "prepare"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not set(out.glob(target)) - left:
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 0.02))
    writing = bool(set(out.glob(".*.tmp")) - left)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return writing and proc.returncode == -signal.SIGKILL


def test_a_prepare_killed_mid_write_never_feeds_partial_files_downstream(
    tmp_path: Path, figures: Counter[str]
) -> None:
    """Every file under its final name is a complete version, earlier or new (temp file + rename); the
    manifest is written last, so a mixture is refused by the sha256 check, and a torn file never loads."""
    rng = np.random.default_rng(0)
    n = 120_000  # ~40 MB of float64: each file takes a noticeable time to write and fsync
    np.savez(tmp_path / "big.npz", x=rng.normal(size=(n, 40)), y=np.arange(n) % 10)
    complete: dict[str, set[str]] = {name: set() for name in ("train.npz", "val.npz", "test.npz")}
    for seed in (1, 2):  # the two versions the killed runs alternate between: prepare is byte-reproducible
        params = tiny_params(**{"seed": seed, "data.source": "npz", "data.path": str(tmp_path / "big.npz")})
        prepare(params.data, seed, tmp_path / f"reference-{seed}")
        for name, digest in _digests(tmp_path / f"reference-{seed}").items():
            complete.get(name, set()).add(digest)
    root = tmp_path / "work"
    root.mkdir()
    kills = Counter()
    pick = random.Random(0)
    for attempt in range(6):
        seed = 1 + attempt % 2
        write_params(root / "params.yaml", tiny_params(**{"seed": seed, "data.source": "npz",
                                                          "data.path": str(tmp_path / "big.npz")}))  # fmt: skip
        kills["during a write" if _killed_prepare(root, pick) else "other"] += 1
        out = root / "data" / "prepared"
        for name, digest in _digests(out).items():
            if name in complete:
                assert digest in complete[name], f"{name} is a torn or unknown version"
        try:
            load_prepared(out)  # what every downstream stage calls first
        except BadInput as exc:  # no manifest yet, or files of two versions: refused, never read
            assert "run `sounding prepare` first" in str(exc) or "does not match its manifest" in str(exc)
    assert kills["during a write"] >= 2, kills
    figures["faults injected"] += sum(kills.values())
    figures["kills during a write"] += kills["during a write"]
    result = run_cli("prepare", cwd=root)  # and a rerun completes, removing the killed writes' leftovers
    assert result.returncode == 0, result.stderr
    load_prepared(root / "data" / "prepared")
    assert not list((root / "data" / "prepared").glob(".*"))
