"""Data preparation: each source, the manifest, exactness of the MNIST-1D benchmark, and error contracts."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sounding.config import Params
from sounding.data.prepare import _save_npz, load_prepared, prepare, verify
from sounding.errors import BadInput, DataIntegrityError
from tests.conftest import make_npz


def test_default_is_exactly_the_published_mnist1d(tmp_path: Path) -> None:
    """The published benchmark's samples, split and order, in float32 (what the networks train on)."""
    from mnist1d.data import get_dataset_args, make_dataset

    params = Params()
    manifest = prepare(params.data, params.seed, tmp_path)
    published = make_dataset(get_dataset_args())
    parts = {n: np.load(tmp_path / f"{n}.npz") for n in ("train", "val", "test")}
    assert published["x"].shape == (4000, 40) and published["x_test"].shape == (1000, 40)
    assert len(parts["train"]["y"]) + len(parts["val"]["y"]) == 4000
    assert manifest["files"]["val.npz"]["shape"]["x"] == [400, 40]
    idx = np.concatenate([parts["train"]["idx"], parts["val"]["idx"]])
    assert sorted(idx.tolist()) == list(range(4000))  # train and val partition the published train set
    for name, x_key, y_key in (("train", "x", "y"), ("val", "x", "y"), ("test", "x_test", "y_test")):
        part = parts[name]
        np.testing.assert_array_equal(part["x"], published[x_key][part["idx"]].astype(np.float32))
        np.testing.assert_array_equal(part["y"], published[y_key][part["idx"]])
    assert manifest["num_classes"] == 10 and manifest["layout"] == "sequence"


@pytest.mark.parametrize("direction", [np.inf, -np.inf])
def test_mnist1d_files_do_not_depend_on_the_cpus_exp(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: float
) -> None:
    """Another CPU's ``numpy.exp`` (AVX-512 has its own) moves the generator's float64 values a few ULPs:
    the prepared files, and so the data sha256 and everything DVC reruns, stay the same."""
    from mnist1d.data import ObjectView, make_dataset

    args = ObjectView(dict(params.data.mnist1d.model_dump(mode="json")))
    reference = prepare(params.data, params.seed, tmp_path / "here")
    here = make_dataset(args)["x"]
    exp = np.exp
    monkeypatch.setattr(np, "exp", lambda x, *a, **k: np.nextafter(exp(x, *a, **k), direction))
    assert not np.array_equal(make_dataset(args)["x"], here)  # the nudge reaches the generator's float64
    assert prepare(params.data, params.seed, tmp_path / "elsewhere")["sha256"] == reference["sha256"]
    assert reference["files"]["train.npz"]["dtype"]["x"] == "float32"


def test_prepared_files_are_the_same_bytes_on_every_python_311(tmp_path: Path) -> None:
    """These bytes come out of Python 3.11.2 and 3.11.7 alike; with every entry forced to zip64 (numpy's
    way) the two wrote different headers, so one data set had two hashes and DVC reran every stage."""
    _save_npz(tmp_path / "a.npz", x=np.arange(6, dtype=np.float32).reshape(2, 3), y=np.arange(2))
    digest = hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    assert digest == "cd195913ed822a0279ff542c3b44d2124cba38a33a4b311a7c2e0d4fe47238ca"
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["x"], np.arange(6).reshape(2, 3))


def test_validation_split_is_stratified_and_deterministic(params: Params, tmp_path: Path) -> None:
    a = prepare(params.data, params.seed, tmp_path / "a")
    b = prepare(params.data, params.seed, tmp_path / "b")
    c = prepare(params.data, params.seed + 1, tmp_path / "c")
    assert a["sha256"] == b["sha256"] != c["sha256"]
    val = np.array(a["files"]["val.npz"]["class_counts"])
    train = np.array(a["files"]["train.npz"]["class_counts"])
    assert np.allclose(val / val.sum(), (val + train) / (val + train).sum(), atol=0.02)


def test_manifest_records_hashes_shapes_and_source(prepared: Path) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["source"] == "mnist1d" and manifest["args"]["num_samples"] == 600
    for name in ("train.npz", "val.npz", "test.npz"):
        info = manifest["files"][name]
        assert len(info["sha256"]) == 64 and info["dtype"]["y"] == "int64"
        assert sum(info["class_counts"]) == info["shape"]["y"][0]
    assert load_prepared(prepared).sha256 == manifest["sha256"]


def test_a_flipped_byte_is_refused_naming_file_and_both_hashes(prepared: Path, figures: Counter[str]) -> None:
    path = prepared / "train.npz"
    expected = json.loads((prepared / "manifest.json").read_text())["files"]["train.npz"]["sha256"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataIntegrityError) as info:
        load_prepared(prepared)
    message = str(info.value)
    assert str(path) in message and expected in message and "sha256 is " in message
    figures["faults injected"] += 1


def test_missing_manifest_says_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="run `sounding prepare` first"):
        verify(tmp_path)


def test_digits_source_is_an_image_dataset(tmp_path: Path) -> None:
    params = Params().with_overrides({"data.source": "digits"})
    manifest = prepare(params.data, params.seed, tmp_path)
    data = load_prepared(tmp_path)
    assert manifest["layout"] == "image" and data.spec.input_shape == (8, 8) and data.spec.num_classes == 10
    assert len(data.train.y) + len(data.val.y) + len(data.test.y) == 1797
    assert data.train.x.max() <= 1.0


def test_npz_source_with_and_without_a_test_split(tmp_path: Path) -> None:
    path = make_npz(tmp_path / "own.npz", n=90, shape=(2, 16), k=3)
    params = Params().with_overrides({"data.source": "npz", "data.path": str(path)})
    prepare(params.data, params.seed, tmp_path / "a")
    a = load_prepared(tmp_path / "a")
    assert a.spec.input_shape == (2, 16) and len(a.test.y) == 18  # 20% carved for test
    make_npz(path, n=90, shape=(2, 16), k=3, x_test=np.zeros((9, 2, 16)), y_test=np.arange(9) % 3)
    prepare(params.data, params.seed, tmp_path / "b")
    assert len(load_prepared(tmp_path / "b").test.y) == 9


def _npz_params(path: Path) -> Params:
    return Params().with_overrides({"data.source": "npz", "data.path": str(path)})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"x": np.zeros((60, 2, 3, 4))},
            r"x has shape \(60, 2, 3, 4\) \(rank 4\); allowed: \[N, L\], \[N, C, L\]",
        ),
        ({"x": np.zeros(60)}, r"rank 1"),
        ({"y": np.arange(60) * 0.5}, r"y has dtype float64; allowed: integer class labels in \[0, K\)"),
        ({"y": np.arange(60) % 3 - 1}, r"y holds label -1; labels must be in \[0, K\)"),
        ({"y": np.arange(59) % 3}, r"x has 60 samples but y has 59"),
        ({"x": np.full((60, 20), np.nan)}, r"x holds 1200 NaN or infinite values"),
        ({"x": np.where(np.eye(60, 20) > 0, np.inf, 0.0)}, r"NaN or infinite"),
        (
            {"y": np.where(np.arange(60) == 0, 7, np.arange(60) % 3)},
            r"classes \[3, 4, 5, 6, 7\] have fewer than 2 samples",
        ),
        ({"x_test": np.zeros((5, 20))}, r"x_test and y_test must be given together"),
        ({"x_test": np.zeros((5, 21)), "y_test": np.zeros(5, dtype=int)}, r"x_test has sample shape \(21,\)"),
    ],
)
def test_bad_npz_is_refused_clearly(tmp_path: Path, extra: dict, message: str) -> None:
    path = make_npz(tmp_path / "bad.npz", **extra)
    with pytest.raises(BadInput, match=message):
        prepare(_npz_params(path).data, 0, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_corrupted_and_missing_npz(tmp_path: Path) -> None:
    path = make_npz(tmp_path / "cut.npz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BadInput, match=r"cut.npz: not a readable .npz file"):
        prepare(_npz_params(path).data, 0, tmp_path / "out")
    with pytest.raises(BadInput, match=r"absent.npz: data file not found"):
        prepare(_npz_params(tmp_path / "absent.npz").data, 0, tmp_path / "out")


def test_pickled_object_arrays_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(BadInput, match="not a readable .npz"):
        prepare(_npz_params(path).data, 0, tmp_path / "out")


def test_preparing_the_same_data_twice_gives_the_same_bytes(params: Params, tmp_path: Path) -> None:
    first = prepare(params.data, params.seed, tmp_path / "a")
    second = prepare(params.data, params.seed, tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a" / "train.npz").read_bytes() == (tmp_path / "b" / "train.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a" / "train.npz") as archive:  # no wall-clock time in the bytes
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
