"""MLflow models-from-code entry point of the NeuroQ generation pyfunc (log.py logs this file as the model)."""

import mlflow

from serving.generation.model import NeuroQGenerationModel

mlflow.models.set_model(NeuroQGenerationModel())
