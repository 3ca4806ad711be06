"""The front's models: each loaded once with ``mlflow.pyfunc.load_model`` (so ``load_context`` checks its
artifacts' digests first, as under ``mlflow models serve``), with the ids clients may name it by.

A model's id is its registered name (``models:/ruri-embed@champion`` -> ``ruri-embed``), which ``GET /v1/models``
lists; ``NAME=URI`` names it explicitly, e.g. ``ruri-embed=/opt/ml/model`` for the model baked into an image
(``python -m serving.docker --openai embed``), where no registry is left to name it. Requests may also name it by the name its answers carry (``model_name`` of its model config, e.g. the hub
id ``cl-nagoya/ruri-v3-310m`` a Ruri model was registered from), so clients of the former server keep working.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass

import mlflow

from serving.base.served import ServedModel, resolve_served_model

__all__ = ["FrontModel", "load_model"]

logger = logging.getLogger(__name__)

_NAMED = re.compile(r"(?P<name>[A-Za-z0-9][\w.-]*)=(?P<uri>.+)")


@dataclass(frozen=True)
class FrontModel:
    task: str  # generate | embed | rerank (config.TASKS)
    served: ServedModel
    pyfunc: mlflow.pyfunc.PyFuncModel
    names: frozenset[str]  # what a request's "model" may say
    created: int  # when it was loaded (GET /v1/models "created")

    @property
    def id(self) -> str:
        return self.served.name

    @property
    def streams(self) -> bool:
        """Whether the logged model has predict_stream (versions logged before streaming existed do not)."""
        return bool(self.pyfunc.metadata.flavors.get("python_function", {}).get("streamable"))

    def describe(self) -> dict:
        """The OpenAI model object of GET /v1/models, plus where it came from."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "neuroq", "task": self.task,
                "uri": self.served.uri, "version": self.served.version, "alias": self.served.alias}


def load_model(task: str, spec: str) -> FrontModel:
    """``spec``: a model URI, or NAME=URI."""
    named = _NAMED.fullmatch(spec)
    uri = named["uri"] if named else spec
    started = time.monotonic()
    pyfunc = mlflow.pyfunc.load_model(uri)
    # A URI of no registered model (runs:/..., a folder) is served under its last path segment unless named.
    served = resolve_served_model(uri, uri.rstrip("/").rsplit("/", 1)[-1])
    if named:
        served = dataclasses.replace(served, name=named["name"])
    answer_name = (pyfunc.model_config or {}).get("model_name")
    model = FrontModel(task, served, pyfunc, frozenset(n for n in (served.name, answer_name) if n), int(time.time()))
    logger.info("%s: %s (version %s) loaded in %.1f s", task, uri, served.version, time.monotonic() - started)
    return model
