"""Bad input, fuzzed with hypothesis: params, user ``.npz`` files and ``predict``'s inputs.

Every input either succeeds or is refused with ``BadInput`` (exit code 2 from the CLI, a message naming the
problem), never another exception; and a refused input leaves what an earlier run produced byte for byte.
The validators are driven in-process (many examples in seconds); a few CLI cases prove the exit code and
the absence of a traceback end to end.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

from sounding.config import Params, parse_overrides, validate_params
from sounding.data.prepare import prepare
from sounding.data.sources import read_npz_arrays
from sounding.errors import BadInput
from tests.conftest import make_npz, run_cli, tiny_params, write_params

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a params model, sections included."""
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += _key_paths(field.annotation, f"{prefix}{name}.")
    return paths


KEYS = _key_paths(Params)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k + "x") | st.text(max_size=16)


def _outcome(call: Any, figures: Counter[str]) -> Any:
    """``call()``'s result, or ``None`` when it raised ``BadInput`` with a message; any other exception
    fails the test (hypothesis then shrinks the input that caused it)."""
    figures["inputs fuzzed"] += 1
    try:
        return call()
    except BadInput as exc:
        assert str(exc).strip(), "a refusal must say what is wrong"
        figures["inputs fuzzed and refused"] += 1
        return None


@FUZZ
@example(overrides={"": None})  # found by this test: an empty key crashed the error message
@given(overrides=st.dictionaries(keys, values, max_size=5))
def test_fuzzed_params_validate_or_are_refused(overrides: dict[str, Any], figures: Counter[str]) -> None:
    params = _outcome(lambda: Params().with_overrides(overrides), figures)
    if params is not None:  # accepted: a complete Params that round-trips
        assert validate_params(params.model_dump(mode="json")) == params


@FUZZ
@given(
    items=st.lists(st.text(max_size=30) | st.builds("{}={}".format, keys, st.text(max_size=12)), max_size=4)
)
def test_fuzzed_overrides_parse_or_are_refused(items: list[str], figures: Counter[str]) -> None:
    _outcome(lambda: Params().with_overrides(parse_overrides(items)), figures)


@FUZZ
@given(document=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_fuzzed_params_files_load_or_are_refused(
    document: str, tmp_path: Path, figures: Counter[str]
) -> None:
    from sounding.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text(document)
    _outcome(lambda: load_params(path), figures)


SAFE_DTYPES = st.sampled_from(["int8", "uint8", "int32", "int64", "float16", "float32", "float64", "bool",
                               "complex64", "U3", "S2", "datetime64[s]"])  # fmt: skip


def arrays(max_rank: int = 4) -> st.SearchStrategy[np.ndarray]:
    """Any array ``np.savez`` can store without pickling: any shape (empty too), dtype and values."""
    return SAFE_DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            np.dtype(dtype),
            hnp.array_shapes(min_dims=0, max_dims=max_rank, min_side=0, max_side=12),
            elements=_elements(np.dtype(dtype)),
        )
    )


def _elements(dtype: np.dtype) -> st.SearchStrategy | None:
    if dtype.kind == "f":
        big = float(np.finfo(dtype).max)
        return st.floats(-big, big, width=dtype.itemsize * 8) | st.sampled_from(
            [math.nan, math.inf, -math.inf]
        )
    return None  # hypothesis's default for the dtype


def labels() -> st.SearchStrategy[np.ndarray]:
    """Mostly plausible labels (so that validation goes deep), sometimes anything."""
    plausible = hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(-2, 6))
    return plausible | arrays(max_rank=2)


def features() -> st.SearchStrategy[np.ndarray]:
    finite = st.floats(-1e6, 1e6) | st.floats(-1e300, 1e300)  # finite, but not all within float32
    plausible = st.integers(0, 40).flatmap(
        lambda n: (
            hnp.arrays(np.float64, (n, 8), elements=finite)
            | hnp.arrays(np.float64, (n, 8), elements=finite | st.sampled_from([math.nan, math.inf]))
        )
    )
    return plausible | arrays()


def datasets() -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """(x, y): often a coherent dataset (every class at least a few times, so preparing can succeed and
    the deeper checks run), otherwise any x and y."""
    coherent = st.tuples(st.integers(20, 60), st.integers(2, 4)).flatmap(
        lambda nk: st.tuples(
            hnp.arrays(np.float64, (nk[0], 8), elements=st.floats(-1e6, 1e6) | st.floats(-1e300, 1e300)),
            st.permutations(np.arange(nk[0]) % nk[1]).map(np.array),
        )
    )
    return coherent | st.tuples(features(), labels())


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def earlier(tmp_path: Path) -> Path:
    """A prepared folder produced by an earlier, valid run."""
    out = tmp_path / "prepared"
    prepare(
        Params().with_overrides({"data.source": "npz", "data.path": str(make_npz(tmp_path / "ok.npz"))}).data,
        0,
        out,
    )
    return out


@FUZZ
@given(
    train=datasets(),
    test=st.none() | datasets(),
    cut=st.none() | st.none() | st.integers(0, 400),
    layout=st.sampled_from(["sequence", "image"]),
)
def test_fuzzed_npz_prepares_or_is_refused_leaving_earlier_output(
    train: tuple, test: tuple | None, cut: int | None, layout: str, tmp_path: Path,
    earlier: Path, figures: Counter[str],
) -> None:  # fmt: skip
    path = tmp_path / "fuzz.npz"
    extra = {} if test is None else {"x_test": test[0], "y_test": test[1]}
    np.savez(path, x=train[0], y=train[1], **extra)
    if cut is not None:  # a truncated download or copy
        path.write_bytes(path.read_bytes()[:cut])
    before = _digest(earlier)
    params = Params().with_overrides(
        {"data.source": "npz", "data.path": str(path), "data.npz_layout": layout}
    )
    manifest = _outcome(lambda: prepare(params.data, 0, earlier), figures)
    if manifest is None:
        assert _digest(earlier) == before  # nothing produced earlier was touched
    else:  # accepted data loads back as finite float32 samples
        figures["fuzzed .npz prepared"] += 1
        from sounding.data.prepare import load_prepared

        data = load_prepared(earlier)
        assert all(np.isfinite(s.x).all() for s in (data.train, data.val, data.test))
        assert data.train.y.max() < data.spec.num_classes


@FUZZ
@given(
    x=features() | arrays(), key=st.sampled_from(["x", "x", "X", "data"]), cut=st.none() | st.integers(0, 300)
)
def test_fuzzed_predict_inputs_are_checked_before_the_model_runs(
    x: np.ndarray, key: str, cut: int | None, tmp_path: Path, stored_model: Any, figures: Counter[str]
) -> None:
    from sounding.serving import check_input

    path = tmp_path / "batch.npz"
    np.savez(path, **{key: x})
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])

    def checked() -> np.ndarray:
        found = read_npz_arrays(path)
        if "x" not in found:
            raise BadInput(f"{path}: missing array 'x'")
        return check_input(found["x"], stored_model, str(path))

    good = _outcome(checked, figures)
    if good is not None:
        probs = stored_model.predict(good)
        assert probs.shape == (len(good), 10) and np.isfinite(probs).all()


@pytest.fixture(scope="module")
def stored_model() -> Any:
    """An untrained MLP for 8-long sequences behind a real MLflow signature, as ``load_model`` returns it."""
    from mlflow.models import Model
    from mlflow.models.signature import infer_signature

    from sounding.models.factory import build_net
    from sounding.serving import StoredModel

    net = build_net("mlp", (8,), 10, "sequence").eval()
    signature = infer_signature(np.zeros((2, 8), np.float32), np.zeros((2, 10), np.float32))
    return StoredModel(net, {}, Model(signature=signature), "")


VALID_PYFUNC = {
    "loader_module": "mlflow.pyfunc.loaders.code_model",
    "artifacts": {
        "weights": {"path": "artifacts/model.safetensors"},
        "config": {"path": "artifacts/config.json"},
    },
}
mlmodels = st.one_of(
    st.text(max_size=80),  # not even YAML of a mapping
    st.fixed_dictionaries({"flavors": values}),
    st.fixed_dictionaries(
        {"flavors": st.fixed_dictionaries({"python_function": st.dictionaries(st.sampled_from(
            ["loader_module", "artifacts", "python_model", "model_code_path"]), values, max_size=4)})}
    ),
    st.builds(  # a valid model whose file paths are replaced by anything, traversal included
        lambda w, c: {"flavors": {"python_function": {**VALID_PYFUNC, "artifacts": {"weights": {"path": w}, "config": {"path": c}}}}},
        st.sampled_from(["artifacts/model.safetensors", "../outside.safetensors", "/etc/passwd", "artifacts"]) | values,
        st.sampled_from(["artifacts/config.json", "MLmodel"]) | values,
    ),
)  # fmt: skip


@pytest.fixture(scope="module")
def logged_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of a logged Sounding model (weights and config), MLmodel to be written by each example."""
    from sounding.models.factory import build_net, save_net

    folder = tmp_path_factory.mktemp("model")
    config = {"arch": "mlp", "input_shape": [8], "num_classes": 10, "layout": "sequence", "net": {}}
    save_net(build_net("mlp", (8,), 10, "sequence"), config, folder / "artifacts")
    return folder


@settings(FUZZ, max_examples=20)  # each example copies the model's files: ~0.1 s
@example(mlmodel="")  # found by this test: an empty MLmodel file raised AttributeError inside MLflow
@given(mlmodel=mlmodels)
def test_fuzzed_mlmodel_files_load_or_are_refused(
    mlmodel: Any, logged_folder: Path, tmp_path: Path, figures: Counter[str]
) -> None:
    """The MLmodel file of a stored model is untrusted: whatever it says, loading succeeds (a Sounding
    model) or is refused with ``BadInput``."""
    import yaml

    from sounding.serving import load_model

    text = mlmodel if isinstance(mlmodel, str) else yaml.safe_dump(mlmodel)
    (logged_folder / "MLmodel").write_text(text)
    model = _outcome(lambda: load_model(str(logged_folder), f"sqlite:///{tmp_path / 'mlflow.db'}"), figures)
    if model is not None:
        assert model.predict(np.zeros((2, 8), np.float32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        (["prepare", "-S", "train=[1, 2]"], {}, "train: Input should be a valid dictionary"),
        (["prepare", "-S", "data.source=npz", "-S", "data.path=cut.npz"], {"cut.npz": 60},
         "cut.npz: not a readable .npz file"),
        (["predict", "--model", "models:/m/1", "--input", "ok.npz", "--output", "out.csv"], {"ok.npz": None},
         "ok.npz: missing array 'x'"),
    ],
)  # fmt: skip
def test_bad_input_through_the_cli_exits_2_without_traceback_or_overwriting(
    args: list[str], files: dict[str, int | None], message: str, tmp_path: Path, figures: Counter[str]
) -> None:
    write_params(tmp_path / "params.yaml", tiny_params())
    for name, cut in files.items():
        if cut is None:
            np.savez(tmp_path / name, X=np.zeros((2, 40)))
        else:
            make_npz(tmp_path / name)
            (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:cut])
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/manifest.json").write_text("{}\n")  # an earlier output
    (tmp_path / "out.csv").write_text("row,predicted\n")
    result = run_cli(*args, "--params", str(tmp_path / "params.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    assert (tmp_path / "data/prepared/manifest.json").read_text() == "{}\n"
    assert (tmp_path / "out.csv").read_text() == "row,predicted\n"
    figures["bad inputs through the CLI"] += 1
