"""The MLflow pyfunc form of a classifier: safetensors weights + JSON config, loaded without unpickling.

The model is logged as "models from code": MLflow stores ``models/pyfunc_entry.py`` (which only calls
``set_model``) instead of a cloudpickled Python object, so loading a registered model never unpickles.
"""

from __future__ import annotations

from pathlib import Path

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

    from sounding.models import factory

    net, _ = factory.load_net(model_dir / "model.safetensors", model_dir / "config.json")
    import torch

    with torch.no_grad():
        output = net(torch.as_tensor(example)).softmax(-1).numpy()
    mlflow.set_tracking_uri(uri)
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
