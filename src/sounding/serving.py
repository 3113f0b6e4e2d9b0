"""The MLflow pyfunc form of a classifier: safetensors weights + JSON config, loaded without unpickling.

The model is logged as "models from code": MLflow stores ``models/pyfunc_entry.py`` (which only calls
``set_model``) instead of a cloudpickled Python object, so MLflow's own loader never unpickles it.

Sounding itself (``predict``, the registry gate, transfer from the registry) goes further with
``load_model``: it reads a model from the store as *data* (the MLmodel YAML, the safetensors weights, the JSON
config) and rebuilds the network with the installed package's code. Nothing stored with a model runs: not
the stored copy of ``pyfunc_entry.py``, not a pickle that someone with write access to the store put in
its place. A model in any other form is refused.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

PIP_REQUIREMENTS = ["torch==2.13.0", "safetensors", "numpy", "mlflow==3.17.2"]
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
"""The ``loader_module`` MLflow writes for a model from code: how every Sounding model is logged."""


def probabilities(net: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] of a float array [N, *input_shape]."""
    import torch

    with torch.no_grad():
        return net(torch.as_tensor(np.asarray(x, dtype=np.float32))).softmax(-1).numpy()


# MLflow warns, on defining a PythonModel, that ``predict`` lacks the type hints it would derive a signature
# from; ours is explicit (``log_pyfunc``). It forces its own warning filter there, so the warning is
# recorded and dropped rather than filtered.
with warnings.catch_warnings(record=True):

    class SoundingClassifier(mlflow.pyfunc.PythonModel):
        """``predict`` maps a float array [N, *input_shape] to class probabilities [N, K]."""

        # No type hints on these methods: MLflow would try to derive a signature from them; ours is explicit.
        def load_context(self, context):  # noqa: ANN001, ANN201
            from sounding.models.factory import load_net

            self.net, self.config = load_net(context.artifacts["weights"], context.artifacts["config"])

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            return probabilities(self.net, model_input)


def log_pyfunc(run_id: str, uri: str, model_dir: Path, example: np.ndarray) -> str:
    """Log ``model_dir/{model.safetensors, config.json}`` as a pyfunc model of the run; return its URI.
    A run that holds these weights already (a rerun stage that resumed the finished run: same fit, same
    weights) keeps its model: logging it again would give the run a second copy."""
    import mlflow
    from mlflow.models import Model, infer_signature

    from sounding import tracking
    from sounding.files import sha256_file
    from sounding.models import factory

    tracking.use_store(uri)
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    digest = sha256_file(model_dir / "model.safetensors")
    for logged in mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    ):
        if logged.tags.get("weights_sha256") == digest:
            return logged.model_uri
    net, _ = factory.load_net(model_dir / "model.safetensors", model_dir / "config.json")
    import torch

    with torch.no_grad():
        output = net(torch.as_tensor(example)).softmax(-1).numpy()
    entry = Path(__file__).parent / "models" / "pyfunc_entry.py"
    # ``Model.log`` with the run's id, as ``mlflow.pyfunc.log_model`` calls it, rather than that function
    # under ``mlflow.start_run(run_id=…)``: leaving that block ends the run FINISHED, and the run's end is
    # ``tracking.tracked_run``'s to decide (not before its stage's outputs are published). With no active
    # run, the logged model goes to the active experiment: the run's.
    mlflow.set_experiment(experiment_id=experiment_id)
    info = Model.log(
        artifact_path=None,  # MLflow 3 names a model (``name``), not a path
        name="model",
        flavor=mlflow.pyfunc,
        python_model=str(entry),
        artifacts={
            "weights": str(model_dir / "model.safetensors"),
            "config": str(model_dir / "config.json"),
        },
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        flavor_name="pyfunc.ModelFromCode",  # what ``log_model`` passes for a model from code
        run_id=run_id,
        tags={"weights_sha256": digest},
    )
    return info.model_uri


@dataclass(frozen=True)
class StoredModel:
    """A Sounding model read from the store as data (``load_model``)."""

    net: Any
    config: dict[str, Any]
    metadata: Any
    """The ``mlflow.models.Model`` of its MLmodel file: the signature ``check_input`` checks against."""
    weights_sha256: str
    """Of the stored weights file: recorded at registration, checked on every later load."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return probabilities(self.net, x)


def load_model(model_uri: str, tracking_uri: str) -> StoredModel:
    """Read a logged or registered Sounding model (``models:/…``, ``runs:/…``) without running or unpickling
    anything stored with it (module docstring). ``BadInput`` when it cannot be read or is in another form."""
    import yaml
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from sounding import tracking
    from sounding.errors import BadInput
    from sounding.files import sha256_file
    from sounding.models.factory import load_net

    tracking.use_store(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(download_artifacts(artifact_uri=model_uri, dst_path=tmp)).resolve()
            # The model's folder: what was downloaded, or the folder in it (a ``runs:/…`` source).
            found = sorted(local.rglob("MLmodel"), key=lambda p: len(p.parts))
            local = found[0].parent if found else local
            metadata = Model.load(str(local / "MLmodel"))
        except MlflowException as exc:
            raise BadInput(f"cannot read model {model_uri!r} from {tracking_uri}: {exc.message}") from None
        except (yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:  # any YAML at all
            raise BadInput(f"{model_uri}: its MLmodel file is not valid ({exc})") from None
        try:  # the MLmodel file is untrusted YAML: any shape
            pyfunc = metadata.flavors["python_function"]
            loader = pyfunc["loader_module"]
            files = {k: pyfunc["artifacts"][k]["path"] for k in ("weights", "config")}
        except (KeyError, TypeError):
            loader, files = None, {}
        if loader != CODE_LOADER or not all(isinstance(v, str) for v in files.values()) or not files:
            raise BadInput(
                f"{model_uri} is not a Sounding model (flavors {_names(metadata.flavors)}, loader "
                f"{loader!r}). Sounding loads only its own models, safetensors weights with a JSON config, "
                "and never runs code or unpickles files stored with a model"
            )
        paths = {k: (local / v).resolve() for k, v in files.items()}
        outside = [str(p) for p in paths.values() if not p.is_relative_to(local)]
        if outside:
            raise BadInput(f"{model_uri}: its MLmodel points outside the model's folder: {outside}")
        digest = sha256_file(paths["weights"]) if paths["weights"].is_file() else ""
        recorded = registered_digest(model_uri, tracking_uri)
        if recorded and recorded != digest:
            raise BadInput(
                f"{model_uri}: its weights (sha256 {digest[:12] or 'missing'}) are not those registered "
                f"(sha256 {recorded[:12]}): the stored file was changed or corrupted; register the model again"
            )
        try:
            net, config = load_net(paths["weights"], paths["config"])
        except BadInput as exc:  # named after the model, not the temporary copy it was read from
            raise BadInput(f"{model_uri}: {str(exc).replace(f'{local}/', '')}") from None
    return StoredModel(net, config, metadata, digest)


def registered_digest(model_uri: str, tracking_uri: str) -> str | None:
    """The weights sha256 recorded when the version a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``
    URI names was registered (``registry.register_and_gate``); ``None`` for other URIs or none recorded."""
    from mlflow.exceptions import MlflowException

    from sounding import tracking

    ref = model_uri.removeprefix("models:/")
    if ref == model_uri:
        return None
    c = tracking.client(tracking_uri)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = c.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.partition("/")
            version = c.get_model_version(name, number) if number.isdigit() else None
    except MlflowException:
        return None  # the download reports a missing model
    return version.tags.get("weights_sha256") if version is not None else None


def _names(flavors: Any) -> list[str]:
    return sorted(map(str, flavors)) if isinstance(flavors, dict) else []


def check_input(x: np.ndarray, model: Any, source: str) -> np.ndarray:
    """Validate ``x`` against the model's input signature (rank, sample shape, dtype, finiteness).

    Returns it as float32; raises ``BadInput`` stating the expected shape.
    """
    from sounding.errors import BadInput

    schema = model.metadata.get_input_schema()
    spec = schema.inputs[0] if schema is not None else None
    expected = tuple(spec.shape) if spec is not None and hasattr(spec, "shape") else None
    shown = f"[N, {', '.join(str(d) for d in expected[1:])}]" if expected else "the model's input shape"
    if expected is not None and (x.ndim != len(expected) or tuple(x.shape[1:]) != tuple(expected[1:])):
        raise BadInput(f"{source}: x has shape {list(x.shape)}; the model expects {shown} (float32)")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise BadInput(f"{source}: x has dtype {x.dtype}; the model expects real numbers, shape {shown}")
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise BadInput(
            f"{source}: x holds {int((~np.isfinite(x32)).sum())} NaN or infinite values "
            "(as float32, whose largest is ±3.4e38); all values must be finite"
        )
    return x32


def predict_file(model_uri: str, tracking_uri: str, input_path: Path, output_path: Path) -> int:
    """Batch inference: ``x`` from an ``.npz`` → CSV of ``row, predicted, p_0 … p_K-1``. Returns the row count."""
    from sounding.data.sources import read_npz_arrays
    from sounding.errors import BadInput
    from sounding.files import write_text

    arrays = read_npz_arrays(input_path)
    if "x" not in arrays:
        raise BadInput(f"{input_path}: missing array 'x'; found {sorted(arrays)}")
    model = load_model(model_uri, tracking_uri)
    x = check_input(arrays["x"], model, str(input_path))
    probs = model.predict(x)
    if not np.isfinite(probs).all():
        rows = int((~np.isfinite(probs)).any(axis=1).sum())
        raise BadInput(
            f"{model_uri}: {rows} of {len(probs)} rows of probabilities are NaN or infinite; nothing written"
        )
    header = "row,predicted," + ",".join(f"p_{k}" for k in range(probs.shape[1]))
    lines = [header] + [
        f"{i},{int(p.argmax())}," + ",".join(f"{v:.6g}" for v in p) for i, p in enumerate(probs)
    ]
    write_text(output_path, "\n".join(lines) + "\n")
    return len(probs)
