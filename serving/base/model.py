"""`ServingModel`: the MLflow pyfunc every served model derives from, and the one path a request takes.

parse (body -> typed request, field by field, request.py) -> prepare (request -> tokenised work items, with the
token limits) -> the cross-request `MicroBatcher` (length-sorted batches on one model thread, batcher.py) ->
respond (outputs -> the public response shape). Subclasses fill in the four steps and `load`.

Loading first checks the artifact files against the digests recorded at logging time (integrity.py), so a
damaged model never starts, and inside `mlflow models serve` makes the server's own body parsing answer
malformed bodies with 4xx (scoring_guard.py).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mlflow.pyfunc

from serving.base import scoring_guard
from serving.base.batcher import MicroBatcher
from serving.base.integrity import verify_logged_model
from serving.base.request import RequestError, plain, shorten_in_place
from serving.base.settings import BatchConfig, Limits, pick_device

# MLflow suggests type hints on `predict` for every PythonModel subclass it sees defined; these models take the
# raw OpenAI / Cohere bodies on purpose and are logged without a signature (log_model.py), so the advice only adds
# noise to every process that imports them.
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method", category=UserWarning)

# Set by mlflow's scoring server (mlflow.environment_variables._MLFLOW_IS_IN_SERVING_ENVIRONMENT).
SERVING_ENV_FLAG = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


class ServingModel(mlflow.pyfunc.PythonModel):
    """parse -> prepare -> batch -> respond; subclasses implement the four steps and `load`."""

    def load_context(self, context) -> None:
        verify_logged_model(context)
        self.limits = Limits.from_env()
        batching = BatchConfig.from_env()
        if pick_device() != "cpu":
            # The model thread stays: torch records CUDA graphs per thread (a new one would record them again), and
            # the OpenMP teams its ending hands back matter on CPUs only.
            batching = dataclasses.replace(batching, idle_ms=None)
        self.batcher = MicroBatcher(self.run_batch, batching, name=type(self).__name__)
        # On a thread that ends with it: the OpenMP team that loading's torch calls start goes with that thread
        # instead of idling for good beside the model thread's (batcher.py).
        with ThreadPoolExecutor(1, thread_name_prefix=f"{type(self).__name__}-load") as loader:
            loader.submit(self.load, context).result()
        scoring_guard.install(self.limits)

    # No type hints on predict: mlflow would turn them into a signature and then reject the raw
    # OpenAI / Cohere bodies (see request.py).
    def predict(self, context, model_input, params=None):
        with self.batcher.reserve() as ticket:
            try:
                request = self.parse(plain(model_input))
                items = self.prepare(request)
            except RequestError:
                if os.environ.get(SERVING_ENV_FLAG, "").lower() == "true":
                    shorten_in_place(model_input)
                raise
            # Requests that run nothing on the model (generation's health, status) do not queue behind those that do.
            outputs = ticket.run(items) if items else []
        return self.respond(request, items, outputs)

    def load(self, context) -> None:
        raise NotImplementedError

    def parse(self, body) -> Any:
        raise NotImplementedError

    def prepare(self, request) -> list:
        raise NotImplementedError

    def run_batch(self, items: list) -> Sequence:
        raise NotImplementedError

    def respond(self, request, items: list, outputs: list) -> dict:
        raise NotImplementedError
