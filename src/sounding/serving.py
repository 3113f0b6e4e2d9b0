"""The MLflow pyfunc form of a classifier: safetensors weights + JSON config, loaded without unpickling.

The model is logged as "models from code": MLflow stores ``models/pyfunc_entry.py`` (which only calls
``set_model``) instead of a cloudpickled Python object, so loading a registered model never unpickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

PIP_REQUIREMENTS = ["torch==2.13.0", "safetensors", "numpy", "mlflow==3.17.2"]


class SoundingClassifier(mlflow.pyfunc.PythonModel):
    """``predict`` maps a float array [N, *input_shape] to class probabilities [N, K]."""

    # No type hints on these methods: MLflow would try to derive a signature from them; ours is explicit.
    def load_context(self, context):  # noqa: ANN001, ANN201
        from sounding.models.factory import load_net

        self.net, self.config = load_net(context.artifacts["weights"], context.artifacts["config"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.net(x).softmax(-1).numpy()


def log_pyfunc(run_id: str, uri: str, model_dir: Path, example: np.ndarray) -> str:
    """Log ``model_dir/{model.safetensors, config.json}`` as a pyfunc model of the run; return its URI."""
    import mlflow
    from mlflow.models import infer_signature

    from sounding import tracking
    from sounding.models import factory

    net, _ = factory.load_net(model_dir / "model.safetensors", model_dir / "config.json")
    import torch

    with torch.no_grad():
        output = net(torch.as_tensor(example)).softmax(-1).numpy()
    tracking.use_store(uri)
    entry = Path(__file__).parent / "models" / "pyfunc_entry.py"
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(entry),
            artifacts={
                "weights": str(model_dir / "model.safetensors"),
                "config": str(model_dir / "config.json"),
            },
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
        )
    return info.model_uri


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
    if not np.isfinite(x).all():
        raise BadInput(f"{source}: x holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    return x.astype(np.float32)


def predict_file(model_uri: str, tracking_uri: str, input_path: Path, output_path: Path) -> int:
    """Batch inference: ``x`` from an ``.npz`` → CSV of ``row, predicted, p_0 … p_K-1``. Returns the row count."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from sounding import tracking
    from sounding.data.sources import read_npz_arrays
    from sounding.errors import BadInput
    from sounding.files import write_text

    arrays = read_npz_arrays(input_path)
    if "x" not in arrays:
        raise BadInput(f"{input_path}: missing array 'x'; found {sorted(arrays)}")
    tracking.use_store(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise BadInput(f"cannot load model {model_uri!r}: {exc.message}") from None
    x = check_input(arrays["x"], model, str(input_path))
    probs = np.asarray(model.predict(x))
    header = "row,predicted," + ",".join(f"p_{k}" for k in range(probs.shape[1]))
    lines = [header] + [
        f"{i},{int(p.argmax())}," + ",".join(f"{v:.6g}" for v in p) for i, p in enumerate(probs)
    ]
    write_text(output_path, "\n".join(lines) + "\n")
    return len(probs)
