"""Data sources: the generated MNIST-1D benchmark, scikit-learn's digits, and a user's ``.npz``.

Each source returns a ``RawData``: a training part, an optional published test part, the input layout
(``sequence`` for [N, L] / [N, C, L], ``image`` for [N, H, W]) and the arguments that produced it.
"""

from __future__ import annotations

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


def load_source(params: DataParams) -> RawData:
    """Load the source named in ``params.source``."""
    if params.source == "mnist1d":
        return _mnist1d(params)
    if params.source == "digits":
        return _digits()
    return load_npz(Path(params.path), params.npz_layout)


def _mnist1d(params: DataParams) -> RawData:
    # make_dataset generates offline; mnist1d's get_dataset(download=True) would call the network.
    from mnist1d.data import ObjectView, make_dataset

    args = params.mnist1d.model_dump(mode="json")
    data = make_dataset(ObjectView(dict(args, padding=list(args["padding"]))))
    return RawData(
        x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"], layout="sequence", args=args
    )


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
