"""Stand-in MLflow pyfunc models for registry tests, where what matters is which version an alias points at and
a real model would only cost time to log."""

from __future__ import annotations

import mlflow


class Constant(mlflow.pyfunc.PythonModel):
    """Answers every request with the same one-choice completion."""

    def predict(self, context, model_input, params=None):
        return {"choices": [{"text": "こんにちは"}]}
