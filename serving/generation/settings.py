"""Generation's own settings, read when the model loads, and which registered model the server answers for.

Besides base/settings.py's NEUROQ_SERVING_MAX_CHARS (per prompt or chat), MAX_ITEMS (chat messages),
BATCH_SIZE (sequences per merged generate call), BATCH_WAIT_MS and DEVICE:

  NEUROQ_SERVING_MAX_PROMPTS          [16]       sequences per request: prompts x n (or batch rows)
  NEUROQ_SERVING_MAX_NEW_TOKENS       [256]      largest max_tokens / max_length (also always < the context)
  NEUROQ_SERVING_SESSION_DIR          [$TMPDIR/neuroq-sessions]  directory of the session database; every worker
                                                 of a server must see the same one (one host: sqlite)
  NEUROQ_SERVING_SESSION_MAX_TURNS    [8]        turns kept per session (oldest dropped first)
  NEUROQ_SERVING_SESSION_MAX_TOKENS   [512]      tokens of history kept per session
  NEUROQ_SERVING_SESSION_TTL_S        [604800]   turns older than this are deleted
  NEUROQ_SERVING_MODEL_URI            [unset]    the URI being served, e.g. models:/neuroq@champion: ``status``
                                                 reports its name, alias and version (an alias is resolved to
                                                 its version through the registry once, at load). Unset:
                                                 the name recorded at logging time, version and alias null.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from serving.base.settings import EnvSettings, setting

__all__ = ["GenerationSettings", "ServedModel", "resolve_served_model"]

logger = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


@dataclass(frozen=True)
class GenerationSettings(EnvSettings):
    max_prompts: int = setting("MAX_PROMPTS", 16, minimum=1)
    max_new_tokens: int = setting("MAX_NEW_TOKENS", 256, minimum=1)
    session_dir: Path = setting("SESSION_DIR",
                                default_factory=lambda: Path(tempfile.gettempdir()) / "neuroq-sessions")
    session_max_turns: int = setting("SESSION_MAX_TURNS", 8, minimum=1)
    session_max_tokens: int = setting("SESSION_MAX_TOKENS", 512, minimum=1)
    session_ttl_s: float = setting("SESSION_TTL_S", 7 * 24 * 3600, minimum=1.0)
    model_uri: str | None = setting("MODEL_URI", None)


@dataclass(frozen=True)
class ServedModel:
    """Which registered model this server answers for, as ``status`` reports it."""

    name: str
    version: str | None
    alias: str | None
    uri: str | None


def resolve_served_model(model_uri: str | None, logged_name: str | None) -> ServedModel:
    """Name, version and alias from ``model_uri``; an alias is looked up in the registry (once, at load)."""
    name = logged_name or "neuroq"
    if not model_uri:
        return ServedModel(name, None, None, None)
    match = _MODEL_URI.fullmatch(model_uri)
    if match is None:
        logger.warning("NEUROQ_SERVING_MODEL_URI=%s is not models:/NAME@ALIAS or models:/NAME/VERSION", model_uri)
        return ServedModel(name, None, None, model_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    if alias is not None:
        try:
            version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        except Exception as exc:  # the registry may be unreachable; serving must still start
            logger.warning("could not resolve %s to a version: %s", model_uri, exc)
    return ServedModel(name, version, alias, model_uri)
