"""MLflow models-from-code entry point of the embeddings pyfunc (serving.ruri.register logs this file as the model)."""

import mlflow

from serving.embeddings.model import EmbeddingModel

mlflow.models.set_model(EmbeddingModel())
