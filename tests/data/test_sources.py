"""A user's own time series: UCR/UEA .ts files (aeon's reader), CSV and Parquet tables, labels of any kind,
the sets bundled with aeon, and bad files refused through the CLI with exit code 2, nothing written."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sounding.config import Params
from sounding.data.examples import bundled_sets
from sounding.data.prepare import load_prepared, prepare
from sounding.data.sources import load_table, load_ts
from sounding.errors import BadInput
from tests.conftest import run_cli, write_params


def _bundled(name: str) -> tuple[Path, Path]:
    return bundled_sets()[name]


def test_a_univariate_bundled_set_reads_as_published() -> None:
    raw = load_ts(*_bundled("ItalyPowerDemand"))
    assert raw.x.shape == (67, 24) and raw.x_test is not None and raw.x_test.shape == (1029, 24)
    assert raw.classes == ("1", "2") and raw.layout == "sequence"
    assert sorted(set(raw.y.tolist())) == [0, 1] and sorted(set(raw.y_test.tolist())) == [0, 1]
    assert raw.args["test_path"].endswith("ItalyPowerDemand_TEST.ts")


def test_series_of_different_lengths_are_padded_to_the_longest_with_the_training_channel_means(
    tmp_path: Path,
) -> None:
    """Two channels; the training file's series have 2 and 3 values, the test file's 4: every series is
    padded at the end to 4 values, each channel with its mean over the training file's values."""
    header = (
        "@problemName t\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true a b\n@data\n"
    )
    (tmp_path / "train.ts").write_text(header + "1,2:10,20:a\n3,4,5:30,40,50:b\n")
    (tmp_path / "test.ts").write_text(header + "1,2,3,4:5,6,7,8:a\n9,8:7,6:b\n")
    raw = load_ts(tmp_path / "train.ts", tmp_path / "test.ts")
    assert raw.x.shape == (2, 2, 4) and raw.x_test is not None and raw.x_test.shape == (2, 2, 4)
    np.testing.assert_array_equal(raw.x[0], [[1, 2, 3, 3], [10, 20, 30, 30]])  # means 3 and 30
    np.testing.assert_array_equal(raw.x[1], [[3, 4, 5, 3], [30, 40, 50, 30]])
    np.testing.assert_array_equal(raw.x_test[1], [[9, 8, 3, 3], [7, 6, 30, 30]])
    np.testing.assert_array_equal(raw.x_test[0], [[1, 2, 3, 4], [5, 6, 7, 8]])  # the longest: as it is
    assert raw.args["padded"] == {
        "length": 4,
        "fill": [3.0, 30.0],
        "files": {
            str(tmp_path / "train.ts"): {"series": 2, "padded": 2, "shortest": 2},
            str(tmp_path / "test.ts"): {"series": 2, "padded": 1, "shortest": 2},
        },
    }
    # Files of equal-length series read as they are, with nothing padded.
    assert "padded" not in load_ts(*_bundled("ItalyPowerDemand")).args


def test_a_bundled_set_of_unequal_lengths_prepares_padded_and_says_so(tmp_path: Path) -> None:
    result = run_cli("example-data", "JapaneseVowels", "--out", "raw", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "270 train and 370 test series (12 channels of length 29), 9 classes" in result.stdout
    assert "series of 7 to 29 values: padded at the end to 29" in result.stdout
    train, test = (tmp_path / "raw" / f"JapaneseVowels_{part}.ts" for part in ("TRAIN", "TEST"))
    params = Params().with_overrides(
        {"data.source": "ts", "data.path": str(train), "data.test_path": str(test)}
    )
    manifest = prepare(params.data, params.seed, tmp_path / "prepared")
    assert load_prepared(tmp_path / "prepared").spec.input_shape == (12, 29)
    files = manifest["args"]["padded"]["files"]
    assert files[str(train)] == {"series": 270, "padded": 270, "shortest": 7}
    assert files[str(test)]["padded"] == 369 and len(manifest["args"]["padded"]["fill"]) == 12


def test_a_multichannel_bundled_set_keeps_its_channels(tmp_path: Path) -> None:
    train, test = _bundled("BasicMotions")
    params = Params().with_overrides(
        {"data.source": "ts", "data.path": str(train), "data.test_path": str(test)}
    )
    manifest = prepare(params.data, params.seed, tmp_path)
    data = load_prepared(tmp_path)
    assert data.spec.input_shape == (6, 100) and data.spec.num_classes == 4
    assert len(data.train.y) + len(data.val.y) == 40 and len(data.test.y) == 40
    # aeon reads the labels in lower case; they are numbered in sorted order
    assert manifest["classes"] == ["badminton", "running", "standing", "walking"]
    assert manifest["files"]["test.npz"]["class_counts"] == [10, 10, 10, 10]


def _table(n: int = 24, length: int = 8, labels: list | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, length)), columns=[f"t{i}" for i in range(length)])
    frame.insert(
        0, "label", labels if labels is not None else [("walk", "run", "jump")[i % 3] for i in range(n)]
    )
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_round_trips_through_prepare(suffix: str, tmp_path: Path) -> None:
    frame, test = _table(), _table(n=9, seed=1)
    path, test_path = tmp_path / f"train{suffix}", tmp_path / f"test{suffix}"
    for f, p in ((frame, path), (test, test_path)):
        f.to_csv(p, index=False) if suffix == ".csv" else f.to_parquet(p)
    params = Params().with_overrides(
        {"data.source": "table", "data.path": str(path), "data.test_path": str(test_path)}
    )
    manifest = prepare(params.data, params.seed, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert manifest["classes"] == ["jump", "run", "walk"] and data.spec.input_shape == (8,)
    part = np.load(tmp_path / "out" / "train.npz")
    names = np.array(manifest["classes"])
    np.testing.assert_allclose(part["x"], frame.iloc[part["idx"], 1:].to_numpy())  # columns in order
    assert (names[part["y"]] == frame["label"].to_numpy()[part["idx"]]).all()
    np.testing.assert_allclose(data.test.x, test.iloc[:, 1:].to_numpy(), rtol=1e-6)
    assert (names[data.test.y] == test["label"].to_numpy()).all()


def test_a_table_without_a_test_file_gets_a_carved_test_part(tmp_path: Path) -> None:
    path = tmp_path / "own.csv"
    _table(n=30).to_csv(path, index=False)
    params = Params().with_overrides({"data.source": "table", "data.path": str(path)})
    prepare(params.data, params.seed, tmp_path / "out")
    assert len(load_prepared(tmp_path / "out").test.y) == 6  # data.test_fraction 0.2, stratified


def test_a_small_set_holds_out_one_series_per_class_where_the_fractions_hold_fewer(tmp_path: Path) -> None:
    """40 series of 10 classes (a UCR set's size): 0.2 of them is 8 test series and 0.1 of the other 30 is
    3 validation series, too few to stratify; each part gets one series per class, and `prepare` says so."""
    path = tmp_path / "own.csv"
    _table(n=40, labels=[f"c{i % 10}" for i in range(40)]).to_csv(path, index=False)
    params = write_params(
        tmp_path / "params.yaml", Params().with_overrides({"data.source": "table", "data.path": str(path)})
    )
    result = run_cli("prepare", "--params", str(params), "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    counts = {name: info["class_counts"] for name, info in manifest["files"].items()}
    assert counts == {"train.npz": [2] * 10, "val.npz": [1] * 10, "test.npz": [1] * 10}
    assert manifest["notes"] == [
        "test part: 0.2 of 40 series is 8, fewer than the 10 classes: held out 10, one per class",
        "validation part: 0.1 of 30 series is 3, fewer than the 10 classes: held out 10, one per class",
    ]
    assert f"{manifest['notes'][1]} (manifest.json: notes)" in result.stdout
    _table(n=120, labels=[f"c{i % 10}" for i in range(120)]).to_csv(path, index=False)  # 24, then 10: enough
    assert run_cli("prepare", "--params", str(params), "--out", "out", cwd=tmp_path).returncode == 0
    assert "notes" not in json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_numeric_labels_are_numbered_in_numeric_order_wherever_their_column_is(tmp_path: Path) -> None:
    path = tmp_path / "own.csv"
    frame = _table(labels=[(10, 2, 1)[i % 3] for i in range(24)])
    frame[[*frame.columns[1:], "label"]].rename(columns={"label": "class"}).to_csv(path, index=False)
    raw = load_table(path, label_column="class")
    assert raw.classes == ("1", "2", "10") and raw.y[:3].tolist() == [2, 1, 0]
    np.testing.assert_allclose(raw.x, frame.iloc[:, 1:].to_numpy())


def test_text_labels_that_are_numbers_sort_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "own.ts"
    lines = [f"{i},{i + 1},{i + 2}:{label}" for i, label in enumerate(["10", "2", "1"] * 3)]
    path.write_text(
        "@univariate true\n@equalLength true\n@classLabel true 1 2 10\n@data\n" + "\n".join(lines)
    )
    raw = load_ts(path)
    assert raw.classes == ("1", "2", "10") and raw.y[:3].tolist() == [2, 1, 0]


# Bad files, through the CLI: each is one line naming the file, exit code 2, and the earlier output untouched.

TS_HEADER = "@problemName t\n@univariate true\n@equalLength {equal}\n@classLabel true a b\n@data\n"


def _ts(rows: list[str], equal: str = "true") -> str:
    return TS_HEADER.format(equal=equal) + "\n".join(rows) + "\n"


GOOD_TS = [f"{i},{i + 1},{i + 2}:{'ab'[i % 2]}" for i in range(8)]

BAD_FILES = {
    # id: (source, {file name: content; None for binary noise}, extra overrides, expected message)
    "ts-ragged-declared-equal": ("ts", {"d.ts": _ts(["1,2,3:a", "1,2:b"])}, {},
                                 "its header says @equalLength true, but series 1 has 3 values and series 2 2"),
    "ts-ragged-channels": ("ts", {"d.ts": _ts(["1,2:a", "1,2,3:b"], equal="false"),
                                  "t.ts": _ts(["1,2:3,4:a", "1,2,5:3,4,6:b"], equal="false").replace(
                                      "@univariate true", "@univariate false\n@dimensions 2")},
                           {"data.test_path": "t.ts"},
                           "its series have 2 channel(s), those of d.ts 1; series with different numbers"),
    "ts-missing-values": ("ts", {"d.ts": _ts([*GOOD_TS, "1,?,3:a", "1,2,NaN:b"])}, {},
                          "2 missing value(s), in series 9, 10 (counting from 1)"),
    "ts-single-class": ("ts", {"d.ts": _ts([f"{i},1,2:a" for i in range(6)])}, {},
                        "every series has the label 'a'; a classifier needs 2 classes or more"),
    "ts-label-only-in-test": ("ts", {"d.ts": _ts(GOOD_TS), "t.ts": _ts(["1,2,3:a", "1,2,3:c"])},
                              {"data.test_path": "t.ts"}, "label(s) 'c' occur only in the test file"),
    "ts-missing-file": ("ts", {}, {}, "data file not found"),
    "ts-unreadable": ("ts", {"d.ts": None}, {}, "not a readable .ts file"),
    "ts-regression": ("ts", {"d.ts": _ts([f"{i},1,2:{i}.5" for i in range(6)]).replace("@classLabel true a b", "@targetLabel true")},
                      {}, "holds a regression target"),
    "table-wrong-label-column": ("table", {"d.csv": "class,t0,t1\na,1,2\nb,3,4\n"}, {},
                                 "no label column 'label' (data.label_column); columns found: 'class', 't0', 't1'"),
    "table-ragged-row": ("table", {"d.csv": "label,t0,t1,t2\na,1,2,3\nb,1,2\na,1,2,3\nb,4,5,6\n"}, {},
                         "1 missing value(s), in row(s) 2 (counting from 1)"),
    "table-missing-values": ("table", {"d.csv": "label,t0,t1\na,1,\nb,3,4\na,,6\nb,7,8\n"}, {},
                             "2 missing value(s), in row(s) 1, 3"),
    "table-single-class": ("table", {"d.csv": "label,t0\nx,1\nx,2\nx,3\n"}, {}, "every series has the label 'x'"),
    "table-class-of-one-row": ("table", {"d.csv": "label,t0\na,1\nb,2\na,3\nc,4\na,5\nb,6\n"}, {},
                               "cannot carve a stratified test split: classes ['c'] have fewer than 2 samples"),
    "table-label-only-in-test": ("table", {"d.csv": "label,t0\na,1\nb,2\na,3\nb,4\n", "t.csv": "label,t0\nz,1\n"},
                                 {"data.test_path": "t.csv"}, "label(s) 'z' occur only in the test file"),
    "table-text-values": ("table", {"d.csv": "label,t0,t1\na,1,x\nb,3,4\n"}, {},
                          "values that are not numbers in column(s) 't1'"),
    "table-saved-index": ("table", {"d.csv": ",label,t0\n0,a,1\n1,b,2\n"}, {}, "most likely a saved row index"),
    "table-missing-file": ("table", {}, {}, "data file not found"),
    "table-unreadable-parquet": ("table", {"d.parquet": None}, {}, "not a readable Parquet file"),
    "table-unreadable-csv": ("table", {"d.csv": None}, {}, "not a readable CSV file"),
}  # fmt: skip


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _run_cli_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``sounding ARGS`` in this process, through the console script's ``main`` (exit codes included):
    aeon's import (seconds) is paid once, not once per case."""
    from sounding.cli import main

    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own
    argv, sys.argv = sys.argv, ["sounding", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, handler)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def earlier(tmp_path: Path) -> Path:
    """A prepared folder from an earlier, valid run, and the params file the CLI reads."""
    write_params(tmp_path / "params.yaml", Params())
    _table(n=60).to_csv(tmp_path / "ok.csv", index=False)
    params = Params().with_overrides({"data.source": "table", "data.path": str(tmp_path / "ok.csv")})
    prepare(params.data, params.seed, tmp_path / "prepared")
    return tmp_path / "prepared"


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_exits_2_naming_it_and_writes_nothing(
    case: str, earlier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, files, extra, message = BAD_FILES[case]
    for name, content in files.items():
        if content is None:  # noise: not text, not a table
            (tmp_path / name).write_bytes(bytes(range(256)) * 8)
        else:
            (tmp_path / name).write_text(content)
    path = "d.ts" if source == "ts" else next((n for n in files if n.startswith("d.")), "d.csv")
    overrides = {"data.source": source, "data.path": path, **extra}
    named = extra.get("data.test_path", path)  # the file the problem is in
    before = _state(earlier)
    code, err = _run_cli_here(
        ["prepare", "--out", str(earlier), "--params", "params.yaml"]
        + [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")],
        capsys,
    )
    assert code == 2
    assert err.startswith(f"error: {named}: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _state(earlier) == before


def test_the_console_script_refuses_a_ts_file_whose_header_lies_with_exit_2(
    earlier: Path, tmp_path: Path
) -> None:
    (tmp_path / "d.ts").write_text(BAD_FILES["ts-ragged-declared-equal"][1]["d.ts"])
    before = _state(earlier)
    result = run_cli(
        "prepare", "--out", str(earlier), "--params", "params.yaml",
        "-S", "data.source=ts", "-S", "data.path=d.ts", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith(
        "error: d.ts: its header says @equalLength true"
    )
    assert _state(earlier) == before


def test_the_old_npz_path_key_points_to_its_new_name(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"data.npz_path: unknown key; did you mean 'data.path'\?"):
        Params().with_overrides({"data.npz_path": "x.npz"})
    with pytest.raises(BadInput, match=r"'mnist1d', 'digits', 'npz', 'ts' or 'table' \(got 'csv'\)"):
        Params().with_overrides({"data.source": "csv"})


# sounding example-data


def test_example_data_copies_a_bundled_set_and_prints_the_params_that_prepare_it(tmp_path: Path) -> None:
    result = run_cli("example-data", "ItalyPowerDemand", "--out", "raw", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    train, test = _bundled("ItalyPowerDemand")
    assert (tmp_path / "raw" / train.name).read_bytes() == train.read_bytes()
    assert (tmp_path / "raw" / test.name).read_bytes() == test.read_bytes()
    assert "67 train and 1029 test series (length 24), 2 classes" in result.stdout
    command = next(line.strip() for line in result.stdout.splitlines() if "sounding prepare" in line)
    overrides = [arg for arg in command.split()[2:] if arg != "-S"]
    params = Params().with_overrides(overrides)
    prepare(params.data, params.seed, tmp_path / "out")  # the printed overrides work, from that folder
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["classes"] == ["1", "2"]


def test_example_data_lists_the_bundled_sets_for_an_unknown_name(tmp_path: Path) -> None:
    result = run_cli("example-data", "NoSuchSet", cwd=tmp_path)
    assert result.returncode == 2 and "unknown example set 'NoSuchSet'" in result.stderr
    for name in ("ItalyPowerDemand", "BasicMotions", "OSULeaf", "GunPoint", "ArrowHead"):
        assert name in result.stderr
    assert not (tmp_path / "data").exists()


def test_example_data_never_overwrites_a_different_file(tmp_path: Path) -> None:
    from sounding.data.examples import copy_example

    (tmp_path / "GunPoint_TRAIN.ts").write_text("mine\n")
    with pytest.raises(BadInput, match="GunPoint_TRAIN.ts exists and is not aeon's"):
        copy_example("gunpoint", tmp_path)
    assert (tmp_path / "GunPoint_TRAIN.ts").read_text() == "mine\n"
    assert not (tmp_path / "GunPoint_TEST.ts").exists()
    with pytest.raises(BadInput, match="CardanoSentiment cannot be prepared: .*regression target"):
        copy_example("CardanoSentiment", tmp_path)
    assert not (tmp_path / "CardanoSentiment_TRAIN.ts").exists()
