"""``prepare``: split a source into train/val/test files with a sha256 manifest; ``load_prepared`` verifies it.

Layout of a prepared folder::

    train.npz  val.npz  test.npz    arrays x, y and idx (row index in the source's train or test part)
    manifest.json                   sha256, shapes, dtypes and class counts of each file, the source and
                                    its arguments, the layout, the class names (``classes``: label i is
                                    ``classes[i]``), ``sha256``: one hash of all three files, and
                                    ``notes`` when a part held out was raised to one series per class

The manifest is written last, so a prepare killed mid-way leaves files that fail verification rather
than files that silently feed training.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sounding.config import DataParams
from sounding.data.sources import RawData, load_source
from sounding.errors import BadInput, DataIntegrityError
from sounding.files import atomic_write, sha256_file, write_json

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data, and nothing else."""

    input_shape: tuple[int, ...]
    """Shape of one sample: (L,) or (C, L) for sequences, (H, W) for images."""
    layout: str
    num_classes: int
    standardize: str = "none"
    """How models standardise these inputs (``data.standardize`` resolved): none | channel | series."""


@dataclass(frozen=True)
class Prepared:
    train: Split
    val: Split
    test: Split
    spec: DataSpec
    sha256: str
    """One hash over the three prepared files: the data version every run is tagged with."""


def _stratified_split(
    y: np.ndarray, fraction: float, seed: int, what: str, raw: RawData
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Indices (kept, held out), each sorted so kept rows stay in source order, and a note when the part
    held out was raised to one series per class (``fraction`` of a small set holds fewer than that)."""
    from sklearn.model_selection import train_test_split

    where = f"{raw.args['path']}: " if "path" in raw.args else ""  # a user's file
    counts = np.bincount(y)
    if (counts < 2).any():
        rare = [int(c) for c in np.flatnonzero(counts < 2)]
        if raw.classes is not None:
            raise BadInput(
                f"{where}cannot carve a stratified {what} split: classes {[raw.classes[c] for c in rare]} "
                "have fewer than 2 samples (every class needs at least 2)"
            )
        raise BadInput(
            f"{where}cannot carve a stratified {what} split: classes {rare} have fewer than 2 samples "
            f"(labels must cover every class in [0, {len(counts)}) with at least 2 samples each)"
        )
    # What scikit-learn holds out for a float fraction; a stratified part needs a series of every class,
    # and so does the rest (every class has 2 or more, so holding out one of each always leaves one).
    size: float | int = fraction
    note = None
    if (held := math.ceil(fraction * len(y))) < len(counts):
        size = len(counts)
        note = (
            f"{what} part: {fraction} of {len(y)} series is {held}, fewer than the {len(counts)} classes: "
            f"held out {size}, one per class"
        )
    try:
        kept, held_out = train_test_split(np.arange(len(y)), test_size=size, stratify=y, random_state=seed)
    except ValueError as exc:
        raise BadInput(f"{where}cannot carve a stratified {what} split of {fraction}: {exc}") from exc
    return np.sort(kept), np.sort(held_out), note


def split_source(
    raw: RawData, params: DataParams, seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """(x, y, idx) per split: val carved from train, test as published or carved when absent; and the
    notes of parts raised to one series per class."""
    test_note = None
    if raw.x_test is None:
        kept, held, test_note = _stratified_split(raw.y, params.test_fraction, seed, "test", raw)
        x, y, x_test, y_test = raw.x[kept], raw.y[kept], raw.x[held], raw.y[held]
        test_idx = held
        source_idx = kept
    else:
        x, y, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
        test_idx = np.arange(len(y_test))
        source_idx = np.arange(len(y))
    train, val, val_note = _stratified_split(y, params.val_fraction, seed, "validation", raw)
    splits = {
        "train": (x[train], y[train], source_idx[train]),
        "val": (x[val], y[val], source_idx[val]),
        "test": (x_test, y_test, test_idx),
    }
    return splits, [note for note in (test_note, val_note) if note]


def prepare(params: DataParams, seed: int, out_dir: str | Path) -> dict:
    """Load the source, split it, write the three files and the manifest; return the manifest."""
    out_dir = Path(out_dir)
    raw = load_source(params)
    splits, notes = split_source(raw, params, seed)
    classes = list(raw.classes) if raw.classes is not None else [str(c) for c in range(int(raw.y.max()) + 1)]
    num_classes = len(classes)
    for leftover in out_dir.glob(".*.tmp"):  # a killed earlier run's unfinished writes (atomic_write)
        leftover.unlink()
    files = {}
    for name, (x, y, idx) in splits.items():
        path = out_dir / f"{name}.npz"
        atomic_write(path, lambda tmp, x=x, y=y, idx=idx: _save_npz(tmp, x=x, y=y, idx=idx))
        files[path.name] = {
            "sha256": sha256_file(path),
            "shape": {"x": list(x.shape), "y": list(y.shape)},
            "dtype": {"x": str(x.dtype), "y": str(y.dtype)},
            "class_counts": np.bincount(y, minlength=num_classes).tolist(),
        }
    manifest = {
        "source": params.source,
        "args": raw.args,
        "seed": seed,
        "val_fraction": params.val_fraction,
        "layout": raw.layout,
        "num_classes": num_classes,
        "standardize": params.standardize_mode,
        "classes": classes,
        "files": files,
        "sha256": _combined_hash(files),
    }
    if notes:  # only then: the manifest of a set that needs none keeps its bytes (and DVC its hash)
        manifest["notes"] = notes
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez``, byte for byte reproducible: numpy stamps each zip entry with the current time, so the
    same data got a new sha256 on every run and everything downstream retrained. Entries here carry a
    fixed timestamp; ``np.load`` reads the file as any other .npz.

    Nor is every entry forced to zip64 as numpy forces it: Python 3.11.2 and 3.11.7 write those headers
    differently, so the same data had two sha256 and a fresh clone on the other Python reran every stage,
    tuning included. Told the size ahead, ``zipfile`` writes zip64 records only for an entry over 2 GiB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            array = np.asanyarray(array)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # An upper bound (the .npy header is under 4096 bytes); the true size is written after.
            entry.file_size = array.nbytes + 4096
            with archive.open(entry, "w") as fh:
                np.lib.format.write_array(fh, array, allow_pickle=False)


def _combined_hash(files: dict) -> str:
    joined = "".join(files[f"{name}.npz"]["sha256"] for name in SPLITS)
    return hashlib.sha256(joined.encode()).hexdigest()


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise BadInput(f"{path} not found: run `sounding prepare` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataIntegrityError(f"{path} is not valid JSON ({exc}); re-run `sounding prepare`") from exc


def verify(data_dir: str | Path) -> dict:
    """Check every prepared file against the manifest's sha256; return the manifest."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    for name in SPLITS:
        path = data_dir / f"{name}.npz"
        expected = manifest["files"][path.name]["sha256"]
        if not path.is_file():
            raise DataIntegrityError(f"{path} is missing; re-run `sounding prepare`")
        actual = sha256_file(path)
        if actual != expected:
            raise DataIntegrityError(
                f"{path} does not match its manifest: sha256 is {actual}, manifest.json records {expected}. "
                "The file was changed or corrupted; re-run `sounding prepare` (or `dvc checkout`)."
            )
    return manifest


def load_prepared(data_dir: str | Path) -> Prepared:
    """Verify and load a prepared folder; the only reader of prepared data."""
    data_dir = Path(data_dir)
    manifest = verify(data_dir)
    splits = {}
    for name in SPLITS:
        with np.load(data_dir / f"{name}.npz", allow_pickle=False) as npz:
            splits[name] = Split(x=npz["x"].astype(np.float32), y=npz["y"].astype(np.int64))
    spec = DataSpec(
        input_shape=tuple(splits["train"].x.shape[1:]),
        layout=manifest["layout"],
        num_classes=int(manifest["num_classes"]),
        standardize=manifest.get("standardize", "none"),
    )
    return Prepared(**splits, spec=spec, sha256=manifest["sha256"])
