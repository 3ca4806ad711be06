"""A real `mlflow models serve` subprocess for tests: a registered model served from a sqlite store.

    with mlflow_models_serve("models:/ruri-embed@champion", tracking_uri) as url:
        requests.post(f"{url}/invocations", json={"input": ["..."]})

Several servers start faster together (each spends ~10 s importing): create them with
`ModelServer(...)`, call `start()` on each, then `wait_ready()` on each, and `stop()` at the end, or let
`serve_all({"embed": ModelServer(...), ...})` do that and yield their URLs by name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.mlflow_server import free_port, stop_process_group

__all__ = ["ModelServer", "mlflow_models_serve", "serve_all"]


class ModelServer:
    """`mlflow models serve --env-manager local -m MODEL_URI -p PORT [-w N]` on loopback.

    A subclass serves through another command (`command()`) that is ready when `ready_path` answers 200."""

    name = "mlflow models serve"
    ready_path = "/ping"

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str,
        *,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        request_timeout: int = 60,
    ):
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.workers = workers
        self.env = dict(env or {})
        self.request_timeout = request_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir or tempfile.gettempdir()) / f"mlflow-models-serve-{self.port}.log"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "mlflow"), "models", "serve",
            "--env-manager", "local",
            "-m", self.model_uri,
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-w", str(self.workers),
            "-t", str(self.request_timeout),
        ]

    def start(self) -> ModelServer:
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            **self.env,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            # `mlflow models serve` execs uvicorn through bash: it must find the venv's executables.
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        with open(self.log_path, "wb") as log:
            # A new session lets stop() signal the whole tree (bash -> uvicorn -> workers) by one id.
            self._process = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 180.0) -> str:
        """Block until GET `ready_path` answers 200 (the model is loaded); returns the base URL."""
        assert self._process is not None, "call start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server's whole process group: uvicorn (and its workers) outlive the `mlflow` CLI briefly."""
        if self._process is not None:
            stop_process_group(self._process, timeout)
        self._process = None


@contextlib.contextmanager
def mlflow_models_serve(
    model_uri: str,
    tracking_uri: str,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    startup_timeout: float = 180.0,
) -> Iterator[str]:
    """Serve `model_uri` (e.g. models:/name@alias) from `tracking_uri`; yields the base URL."""
    server = ModelServer(model_uri, tracking_uri, workers=workers, env=env, log_dir=log_dir).start()
    try:
        yield server.wait_ready(startup_timeout)
    finally:
        server.stop()


@contextlib.contextmanager
def serve_all(servers: Mapping[str, ModelServer], startup_timeout: float = 180.0) -> Iterator[dict[str, str]]:
    """Start every server, then wait for each (their imports overlap); yields name -> base URL, stops them all."""
    try:
        for server in servers.values():
            server.start()
        yield {name: server.wait_ready(startup_timeout) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
