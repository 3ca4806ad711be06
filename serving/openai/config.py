"""What the OpenAI front serves and how: the ``python -m serving openai`` options, with the environment's values
as defaults for the two that are secrets or deployment limits."""

from __future__ import annotations

from dataclasses import dataclass

from neuroq.errors import ConfigError
from serving.base.settings import EnvSettings, setting

__all__ = ["TASKS", "FrontConfig"]

# Which option loads the model of which routes.
TASKS = ("generate", "embed", "rerank")


@dataclass(frozen=True)
class FrontConfig(EnvSettings):
    generate: str | None = None  # model URI, e.g. models:/neuroq@champion
    embed: str | None = None  # e.g. models:/ruri-embed@champion
    rerank: str | None = None  # e.g. models:/ruri-rerank@champion
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes, each loading its own copy of every model (memory x workers; each with its own
    # batchers, so concurrent requests in different workers are not merged into one forward pass).
    workers: int = 1
    # NEUROQ_SERVING_API_KEY: clients must send `Authorization: Bearer <key>`; unset, no key is asked. The
    # variable keeps the key out of `ps` and shell history, which --api-key does not.
    api_key: str | None = setting("API_KEY", None)
    # NEUROQ_SERVING_MAX_BODY_BYTES: larger bodies get 413 before they are read whole. The default is far above
    # the largest request the models accept (MAX_TOTAL_TOKENS tokens of JSON-escaped text).
    max_body_bytes: int = setting("MAX_BODY_BYTES", 32 * 2**20, minimum=1)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is blank: give a key, or leave it unset to serve without one")

    def model_uris(self) -> dict[str, str]:
        """task -> model URI of every model to load; at least one."""
        uris = {task: getattr(self, task) for task in TASKS if getattr(self, task)}
        if not uris:
            raise ConfigError("no model to serve: give at least one of --generate, --embed, --rerank")
        return uris
