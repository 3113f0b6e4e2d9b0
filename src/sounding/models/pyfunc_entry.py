"""Entry point MLflow executes to load a Sounding classifier ("models from code"; see sounding.serving)."""

import mlflow

from sounding.serving import SoundingClassifier

mlflow.models.set_model(SoundingClassifier())
