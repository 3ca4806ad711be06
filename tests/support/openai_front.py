"""A real `python -m serving openai` subprocess for tests, started and stopped like `ModelServer`.

    server = FrontServer({"generate": "models:/neuroq@champion"}, tracking_uri, api_key="sk-test").start()
    url = server.wait_ready()      # GET /health answers 200 once every model is loaded
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.mlflow_serve import ModelServer

__all__ = ["FrontServer"]


class FrontServer(ModelServer):
    name = "python -m serving openai"
    ready_path = "/health"

    def __init__(self, models: Mapping[str, str], tracking_uri: str, *, api_key: str | None = None,
                 env: Mapping[str, str] | None = None, log_dir: Path | None = None):
        """`models`: task (generate, embed, rerank) -> model URI."""
        super().__init__(" ".join(models.values()), tracking_uri, env={
            **(env or {}), **({"NEUROQ_SERVING_API_KEY": api_key} if api_key else {})}, log_dir=log_dir)
        self.models = dict(models)
        self.log_path = self.log_path.with_name(f"serving-openai-{self.port}.log")

    def command(self) -> list[str]:
        options = [part for task, uri in self.models.items() for part in (f"--{task}", uri)]
        return [sys.executable, "-m", "serving", "openai", *options, "--host", "127.0.0.1", "-p", str(self.port)]
