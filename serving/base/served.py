"""Which registered model a server answers for: name, version and alias from the ``models:/`` URI it serves."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import mlflow

__all__ = ["ServedModel", "resolve_served_model"]

logger = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


@dataclass(frozen=True)
class ServedModel:
    """Which registered model this server answers for, as ``status`` and ``GET /v1/models`` report it."""

    name: str
    version: str | None
    alias: str | None
    uri: str | None


def resolve_served_model(model_uri: str | None, default_name: str) -> ServedModel:
    """Name, version and alias from ``model_uri``; an alias is looked up in the registry (once, at load).
    A URI that names no registered model (unset, ``runs:/...``, a folder) is served as ``default_name``."""
    if not model_uri:
        return ServedModel(default_name, None, None, None)
    match = _MODEL_URI.fullmatch(model_uri)
    if match is None:
        logger.warning("%s is not models:/NAME@ALIAS or models:/NAME/VERSION: serving it as %s", model_uri,
                       default_name)
        return ServedModel(default_name, None, None, model_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    if alias is not None:
        try:
            version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        except Exception as exc:  # the registry may be unreachable; serving must still start
            logger.warning("could not resolve %s to a version: %s", model_uri, exc)
    return ServedModel(name, version, alias, model_uri)
