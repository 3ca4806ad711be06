"""MLflow models-from-code entry point of the rerank pyfunc (serving.ruri.register logs this file as the model)."""

import mlflow

from serving.rerank.model import RerankModel

mlflow.models.set_model(RerankModel())
