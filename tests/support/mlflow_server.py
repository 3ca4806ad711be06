"""A real `mlflow server` subprocess for tests: sqlite backend, artifacts in a folder or an S3 bucket.

The server proxies artifacts (`--artifacts-destination`), so clients only need the tracking URL: the S3
credentials and endpoint go to the server process alone, exactly as on a cluster where training pods talk
HTTP to MLflow and never see the bucket's keys.

    with mlflow_server(tmp_path, artifacts_destination="s3://bucket/mlflow", env=s3_env) as server:
        os.environ["MLFLOW_TRACKING_URI"] = server.url
        server.kill()      # a crash; stop() is a clean shutdown
        server.start()     # the same port, backend store and artifact destination
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["MlflowServer", "free_port", "mlflow_server", "stop_process_group"]


class MlflowServer:
    """`mlflow server` on a loopback port chosen once: `stop()` and `start()` again (or `restart()`) keep the port,
    the backend store and the artifact destination, so a test can take the server down and bring it back."""

    def __init__(
        self,
        workdir: Path,
        *,
        backend_store_uri: str | None = None,
        artifacts_destination: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(self.workdir / "mlartifacts")
        self.env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"mlflow-server-{self.port}.log"
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        if self._process is not None:
            raise RuntimeError(f"mlflow server {self.url} is already running")
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            # One worker keeps the CI footprint to one process tree on 2 cores.
            "--workers", "1",
        ]
        server_env = {**os.environ, **self.env}
        # The server must not inherit a client-side tracking URI pointing at some other store.
        server_env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log_path, "ab") as log:
            # A new session lets stop() signal the whole tree (uvicorn spawns workers) by the server's pid.
            self._process = subprocess.Popen(
                command, cwd=self.workdir, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every process it started; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, timeout)

    def kill(self) -> None:
        """SIGKILL the server and its workers at once: a crash, not a shutdown."""
        self.stop(timeout=0)

    def restart(self, env: Mapping[str, str] | None = None, timeout: float = 90.0) -> MlflowServer:
        """Stop, then start on the same port; `env` replaces the server's extra variables (e.g. a new S3 endpoint)."""
        self.stop()
        if env is not None:
            self.env = dict(env)
        return self.start(timeout)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _wait_healthy(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"mlflow server not healthy after {timeout:.0f}s:\n{self.log_tail()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group `process` leads (started with start_new_session=True), wait up to `timeout` s
    until every member is gone, SIGKILL what is left. Waiting on the leader alone is not enough: servers' workers
    outlive it briefly, and a leader that already exited may have left them running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    if not _group_gone(process, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        _group_gone(process, 5.0)


def _group_gone(process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.poll()  # reap the leader so it does not linger as a zombie member of its group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def mlflow_server(
    workdir: Path,
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 90.0,
) -> Iterator[MlflowServer]:
    """Start `mlflow server` on a free loopback port; stop it (and its workers) on exit.

    `backend_store_uri` defaults to `workdir/mlflow.db`; pass an existing store to browse runs a test made
    without a server. `env` adds variables for the server only (MLFLOW_S3_ENDPOINT_URL, AWS keys).
    """
    server = MlflowServer(workdir, backend_store_uri=backend_store_uri, artifacts_destination=artifacts_destination,
                          env=env)
    try:
        yield server.start(startup_timeout)
    finally:
        server.stop()
