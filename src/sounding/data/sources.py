"""Data sources: the generated MNIST-1D benchmark, scikit-learn's digits, and a user's file: ``.npz``,
UCR/UEA ``.ts`` (read by aeon) or a CSV/Parquet table (read by pandas).

Each source returns a ``RawData``: a training part, an optional published test part, the input layout
(``sequence`` for [N, L] / [N, C, L], ``image`` for [N, H, W]) and the arguments that produced it.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sounding.config import DataParams
from sounding.errors import BadInput


@dataclass(frozen=True)
class RawData:
    x: np.ndarray
    y: np.ndarray
    layout: str
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    args: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    """Class names by label (label ``i`` is ``classes[i]``) for sources whose labels are names, mapped to
    0..K-1 here; ``None`` where the labels already are 0..K-1."""


def load_source(params: DataParams) -> RawData:
    """Load the source named in ``params.source``."""
    if params.source == "mnist1d":
        return _mnist1d(params)
    if params.source == "digits":
        return _digits()
    if params.source == "npz":
        return load_npz(Path(params.path), params.npz_layout)
    test_path = Path(params.test_path) if params.test_path is not None else None
    if params.source == "ts":
        return load_ts(Path(params.path), test_path)
    return load_table(Path(params.path), test_path, params.label_column)


def _mnist1d(params: DataParams) -> RawData:
    # make_dataset generates offline; mnist1d's get_dataset(download=True) would call the network.
    from mnist1d.data import ObjectView, make_dataset

    args = params.mnist1d.model_dump(mode="json")
    data = make_dataset(ObjectView(dict(args, padding=list(args["padding"]))))
    return RawData(
        x=_same_on_every_cpu(data["x"]),
        y=data["y"],
        x_test=_same_on_every_cpu(data["x_test"]),
        y_test=data["y_test"],
        layout="sequence",
        args=args,
    )


def _same_on_every_cpu(x: np.ndarray) -> np.ndarray:
    """Generated float64 values rounded to float32, the precision the networks train in. The generator's
    last bits depend on the CPU: scipy's Gaussian filter (MNIST-1D's correlated noise) builds its kernel
    with ``numpy.exp``, which has an AVX-512 implementation of its own, so a CPU without AVX-512 wrote other
    bytes, another data sha256, and a fresh clone there reran every stage. Differences a few ULPs deep
    vanish in float32 (a value would need to lie within 1e-16 of a float32 rounding boundary)."""
    return x.astype(np.float32)


def _digits() -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; scaling to [0, 1] keeps the default learning rate sensible.
    return RawData(x=digits.images / 16.0, y=digits.target, layout="image", args={"scale": "1/16"})


def load_npz(path: Path, layout: str = "sequence") -> RawData:
    """Read and validate a user ``.npz`` (format: docs/data.md). Never unpickles."""
    arrays = read_npz_arrays(path)
    for required in ("x", "y"):
        if required not in arrays:
            raise BadInput(f"{path}: missing array {required!r}; found {sorted(arrays)}. See docs/data.md")
    has_test = "x_test" in arrays or "y_test" in arrays
    if has_test and not ("x_test" in arrays and "y_test" in arrays):
        raise BadInput(f"{path}: x_test and y_test must be given together")
    x, y = _checked_pair(path, arrays["x"], arrays["y"], "x", "y")
    x_test = y_test = None
    if has_test:
        x_test, y_test = _checked_pair(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise BadInput(f"{path}: x_test has sample shape {x_test.shape[1:]}, x has {x.shape[1:]}")
        if y_test.max() > y.max():
            raise BadInput(
                f"{path}: y_test holds class {int(y_test.max())}, but y only has 0..{int(y.max())}"
            )
    rank_layout = "sequence" if x.ndim == 2 else layout
    return RawData(x=x, y=y, x_test=x_test, y_test=y_test, layout=rank_layout, args={"path": str(path)})


def read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, never unpickling; ``BadInput`` for a missing or unreadable file."""
    if not Path(path).is_file():
        raise BadInput(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{path}: not a readable .npz file ({exc}); see docs/data.md") from exc


def _checked_pair(
    path: Path, x: np.ndarray, y: np.ndarray, xn: str, yn: str
) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim not in (2, 3):
        raise BadInput(
            f"{path}: {xn} has shape {x.shape} (rank {x.ndim}); allowed: [N, L], [N, C, L] or [N, H, W]"
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise BadInput(f"{path}: {xn} has dtype {x.dtype}; allowed: real integer or float numbers")
    with np.errstate(over="ignore"):  # training reads float32: a larger value would become infinite
        bad = int((~np.isfinite(x.astype(np.float32))).sum())
    if bad:
        raise BadInput(
            f"{path}: {xn} holds {bad} NaN or infinite values (as float32, whose largest is ±3.4e38); "
            "all values must be finite"
        )
    if y.ndim != 1:
        raise BadInput(f"{path}: {yn} has shape {y.shape}; allowed: one integer label per sample, shape [N]")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInput(f"{path}: {yn} has dtype {y.dtype}; allowed: integer class labels in [0, K)")
    if len(x) != len(y):
        raise BadInput(f"{path}: {xn} has {len(x)} samples but {yn} has {len(y)}; they must match")
    if len(y) == 0:
        raise BadInput(f"{path}: {xn} is empty")
    if y.min() < 0:
        raise BadInput(f"{path}: {yn} holds label {int(y.min())}; labels must be in [0, K)")
    return x, y.astype(np.int64)


def load_ts(path: Path, test_path: Path | None = None) -> RawData:
    """Read UCR/UEA ``.ts`` files (format: docs/data.md) with aeon's reader: series with one channel
    ([N, L]) or several ([N, C, L]), and class labels of any kind. Series of different lengths (in a file
    or between the two) are padded at the end to the longest one (``_pad_to_longest``)."""
    x, labels = _read_ts(path)
    x_test = test_labels = None
    if test_path is not None:
        x_test, test_labels = _read_ts(test_path)
    args: dict[str, Any] = {"path": str(path), "test_path": None if test_path is None else str(test_path)}
    lengths = {s.shape[-1] for s in x} | ({s.shape[-1] for s in x_test} if x_test is not None else set())
    if len(lengths) > 1:
        x, x_test, args["padded"] = _pad_to_longest(path, x, test_path, x_test)

    def squeezed(a: np.ndarray) -> np.ndarray:  # one channel: [N, L]
        return a[:, 0] if a.shape[1] == 1 else a

    x = squeezed(np.asarray(x))
    x_test = squeezed(np.asarray(x_test)) if x_test is not None else None
    return _labelled(path, x, labels, test_path, x_test, test_labels, args, "series")


def _pad_to_longest(
    path: Path,
    x: np.ndarray | list[np.ndarray],
    test_path: Path | None,
    x_test: np.ndarray | list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Pad every series ([C, L_i]) at the end to the longest length of both files, each channel with its
    mean over the training file's values: after the model's ``channel`` standardisation the padding is 0,
    and the statistics' means are those of the real values. Returns the arrays [N, C, L] and what was done
    (``padded`` in the manifest's ``args``, with the fill values, to pad new series the same way)."""
    parts = {path: x} if x_test is None else {path: x, test_path: x_test}
    channels = {p: sorted({s.shape[0] for s in series}) for p, series in parts.items()}
    if channels[path] != channels.get(test_path, channels[path]):
        raise BadInput(
            f"{test_path}: its series have {_listed(channels[test_path])} channel(s), those of {path} "
            f"{_listed(channels[path])}; series with different numbers of channels cannot be padded to one shape"
        )
    length = max(s.shape[-1] for series in parts.values() for s in series)
    fill = np.nanmean(np.concatenate([np.asarray(s, dtype=np.float64) for s in x], axis=-1), axis=-1)
    padded = {}
    for p, series in parts.items():
        out = np.repeat(fill[None, :, None], len(series), axis=0).repeat(length, axis=2)
        for i, s in enumerate(series):
            out[i, :, : s.shape[-1]] = s
        padded[p] = out
    info = {
        "length": length,
        "fill": [float(v) for v in fill],
        "files": {
            str(p): {
                "series": len(series),
                "padded": sum(s.shape[-1] < length for s in series),
                "shortest": min(s.shape[-1] for s in series),
            }
            for p, series in parts.items()
        },
    }
    return padded[path], (padded[test_path] if x_test is not None else None), info


def _read_ts(path: Path) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """Series ([N, C, L], or one [C, L_i] array each where their lengths differ) and their labels as text."""
    _require_file(path, (".ts",))
    # Imported here, not at module level: aeon's import (numba) takes seconds.
    from aeon.datasets import load_from_ts_file

    try:
        x, labels, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, IndexError) as exc:
        raise _unreadable_ts(path, exc) from exc
    if meta["targetlabel"]:
        raise BadInput(
            f"{path}: holds a regression target (@targetLabel true); a classifier needs class labels"
        )
    if not meta["classlabel"]:
        raise BadInput(f"{path}: has no class labels (@classLabel false); every series needs one")
    if isinstance(x, list):  # aeon's answer for series of unequal length: one [C, L_i] array each
        return [np.asarray(a, dtype=np.float64) for a in x], labels
    if x.ndim != 3 or len(x) == 0:
        raise BadInput(
            f"{path}: no series found (a .ts file is a header ending in @data, then one series a line)"
        )
    return x, labels


def _unreadable_ts(path: Path, exc: Exception) -> BadInput:
    message = re.sub(r"Error loading <[^>]*>\. ", "", str(exc))  # aeon names its file object, not the path
    # aeon stops at the first series whose length differs from the first's (with @equalLength true), or
    # at a series whose channels differ in length (either way); its message holds the case and lengths.
    if ragged := re.search(r"case (\d+) has a different number.*?Saw (\d+) .*? but (\d+) ", message):
        case, first, other = (int(n) for n in ragged.groups())
        if "equal length == False" in message:
            return BadInput(
                f"{path}: the channels of series {case} (counting from 1) have different lengths, {first} "
                f"and {other}; series of different lengths are not supported"
            )
        return BadInput(
            f"{path}: its header says @equalLength true, but series 1 has {first} values and series {case} "
            f"{other}; with @equalLength false its series are padded to the longest (docs/data.md)"
        )
    return BadInput(f"{path}: not a readable .ts file (aeon: {_one_line(message)}); see docs/data.md")


TABLE_SUFFIXES = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}
"""File name endings the table source reads, and the format each names."""


def load_table(path: Path, test_path: Path | None = None, label_column: str = "label") -> RawData:
    """Read a CSV or Parquet table (format: docs/data.md): one row per series, the class in
    ``label_column``, every other column a time step in column order."""
    x, labels, steps = _read_table(path, label_column)
    x_test = test_labels = None
    if test_path is not None:
        x_test, test_labels, test_steps = _read_table(test_path, label_column)
        if len(test_steps) == len(steps) and test_steps != steps:
            at = next(i for i, (a, b) in enumerate(zip(test_steps, steps, strict=True)) if a != b)
            raise BadInput(
                f"{test_path}: its time-step columns are not those of {path}: time step {at + 1} is "
                f"{test_steps[at]!r} here and {steps[at]!r} there"
            )
    args = {
        "path": str(path),
        "test_path": None if test_path is None else str(test_path),
        "label_column": label_column,
    }
    return _labelled(path, x, labels, test_path, x_test, test_labels, args, "row(s)")


def _read_table(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Time steps [N, L], labels and the time-step column names of one table."""
    _require_file(path, tuple(TABLE_SUFFIXES))
    import pandas as pd  # here, like the other readers' libraries: prepare is the only stage that reads

    kind = TABLE_SUFFIXES[path.suffix.lower()]
    try:
        frame = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pandas' parser errors and pyarrow's are ValueErrors
        raise BadInput(f"{path}: not a readable {kind} file ({_one_line(exc)}); see docs/data.md") from exc
    frame.columns = [str(c) for c in frame.columns]
    if label_column not in frame.columns:
        raise BadInput(
            f"{path}: no label column {label_column!r} (data.label_column); "
            f"columns found: {_listed(list(frame.columns))}"
        )
    if frame.empty:
        raise BadInput(f"{path}: no rows; a table holds one series a row")
    steps = [c for c in frame.columns if c != label_column]
    if not steps:
        raise BadInput(
            f"{path}: only the label column {label_column!r}; the time steps are its other columns"
        )
    if unnamed := [c for c in steps if c.startswith("Unnamed: ")]:
        raise BadInput(
            f"{path}: column(s) without a name in the header ({_listed(unnamed)}, as pandas calls them), "
            "most likely a saved row index: write the table without it (to_csv(..., index=False))"
        )
    text = [c for c in steps if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise BadInput(
            f"{path}: values that are not numbers in column(s) {_listed(text)}; every column but the label "
            f"column {label_column!r} is a time step and holds numbers"
        )
    unlabelled = np.flatnonzero(frame[label_column].isna().to_numpy())
    if len(unlabelled):
        raise BadInput(
            f"{path}: the label column {label_column!r} is empty in {len(unlabelled)} row(s): "
            f"{_listed((unlabelled + 1).tolist())} (counting data rows from 1)"
        )
    x = frame[steps].to_numpy(dtype=np.float64, na_value=np.nan)
    return x, frame[label_column].to_numpy(), steps


def _require_file(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise BadInput(f"{path}: this source reads files ending in {', '.join(suffixes)}")
    if not path.is_file():
        raise BadInput(f"{path}: data file not found")


def _labelled(
    path: Path,
    x: np.ndarray,
    labels: np.ndarray,
    test_path: Path | None,
    x_test: np.ndarray | None,
    test_labels: np.ndarray | None,
    args: dict[str, Any],
    unit: str,
) -> RawData:
    """Check a user's series and map their labels (text, numbers) to 0..K-1, sorted by the training
    labels; ``unit`` names what holds each series in the file (``series``, ``row(s)``), for messages."""
    names = np.asarray(labels).astype(str)
    if len(names) == 0:
        raise BadInput(f"{path}: no series found")
    classes = _sorted_classes(np.unique(names).tolist())
    if len(classes) < 2:
        raise BadInput(
            f"{path}: every series has the label {classes[0]!r}; a classifier needs 2 classes or more"
        )
    index = {name: i for i, name in enumerate(classes)}
    _no_missing_values(path, x, unit)
    x, y = _checked_pair(path, x, np.array([index[n] for n in names]), "the series", "the labels")
    y_test = None
    if x_test is not None and test_labels is not None and test_path is not None:
        test_names = np.asarray(test_labels).astype(str)
        unseen = _sorted_classes(sorted(set(test_names.tolist()) - set(classes)))
        if unseen:
            raise BadInput(
                f"{test_path}: label(s) {_listed(unseen)} occur only in the test file; {path} has "
                f"{_listed(classes)}. A model can only predict the classes it was trained on"
            )
        if x_test.shape[1:] != x.shape[1:]:
            raise BadInput(
                f"{test_path}: its series are {_describe(x_test)}, those of {path} are {_describe(x)}"
            )
        _no_missing_values(test_path, x_test, unit)
        x_test, y_test = _checked_pair(
            test_path,
            x_test,
            np.array([index[n] for n in test_names], dtype=np.int64),
            "the series",
            "the labels",
        )
    return RawData(
        x=x, y=y, x_test=x_test, y_test=y_test, layout="sequence", args=args, classes=tuple(classes)
    )


def _sorted_classes(names: list[str]) -> list[str]:
    """Numbers in numeric order (``2`` before ``10``) when every name is one, else text order."""
    try:
        numbers = [float(n) for n in names]
    except ValueError:
        return sorted(names)
    if not all(math.isfinite(v) for v in numbers):
        return sorted(names)
    return [n for _, n in sorted(zip(numbers, names, strict=True))]


def _no_missing_values(path: Path, x: np.ndarray, unit: str) -> None:
    missing = np.isnan(x).reshape(len(x), -1)
    if missing.any():
        rows = np.flatnonzero(missing.any(axis=1)) + 1
        raise BadInput(
            f"{path}: {int(missing.sum())} missing value(s), in {unit} {_listed(rows.tolist())} (counting from "
            "1); missing values are not supported: fill or drop them"
            + (" (a row must have a value in every column)" if unit == "row(s)" else "")
        )


def _describe(x: np.ndarray) -> str:
    return f"{x.shape[1]} channels of length {x.shape[2]}" if x.ndim == 3 else f"of length {x.shape[1]}"


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _listed(items: list, limit: int = 10) -> str:
    """``'a', 'b', … (40 in all)``: a long list cut short for a one-line message."""
    shown = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items)} in all)"
