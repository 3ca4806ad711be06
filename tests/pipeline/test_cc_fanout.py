"""The Common Crawl fan-out under kfp.local, against a real S3 server (SeaweedFS) holding a 10-file fake crawl.

The crawl pipeline (plan -> ParallelFor of shard tasks -> dedup across shards) must give what one process
gives, while S3 is down for the shard tasks' first attempt (they fail and are retried) and with a corrupt, a
truncated and a missing WET file in the window; a second run reuses every task from kfp.local's cache. Built
without the dedup sub-DAG (a local run's choice for dedup_tasks 1), it gives the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from kfp import local
from tests.ingest.fake_crawl import WIDE_CRAWL_ID, wide_crawl_objects

from components.params import PipelineParams
from neuroq.ingest import read_documents, run_ingest
from pipelines.pipeline import CC_KNOBS, CC_PIPELINE_NAME, build_common_crawl_pipeline
from tests.support.s3server import SeaweedS3

pytestmark = pytest.mark.slow

SHARDS = 4
DEDUP_TASKS = 3


class _RestartOnRetry(logging.Handler):
    """Brings S3 back when kfp.local reports a failed attempt: a real outage that lasts exactly one attempt."""

    def __init__(self, server: SeaweedS3) -> None:
        super().__init__(logging.INFO)
        self.server = server
        self.failed_attempts: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "failed (attempt 1/" not in message:
            return
        with self._lock:
            self.failed_attempts.append(message)
            if len(self.failed_attempts) == 1:
                self.server.restart()


@pytest.fixture(scope="module")
def crawl_s3() -> Iterator[SeaweedS3]:
    with SeaweedS3(public_read_buckets=("commoncrawl",)) as server:
        client = server.client()
        for key, data in wide_crawl_objects().items():
            client.put_object(Bucket="commoncrawl", Key=key, Body=data)
        yield server


def _run(params: PipelineParams, root: Path, dedup_fan_out: bool = True) -> list[Path]:
    """Run the crawl pipeline with kfp.local; the run folders it created (none when every task was cached)."""
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*base image.*", category=RuntimeWarning)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=True)
    before = set(root.glob(f"{CC_PIPELINE_NAME}-*"))
    pipeline = build_common_crawl_pipeline(parallelism=2, dedup_fan_out=dedup_fan_out)
    pipeline(params={name: getattr(params, name) for name in CC_KNOBS}, val_fraction=params.val_fraction)
    return sorted(set(root.glob(f"{CC_PIPELINE_NAME}-*")) - before)


def _dataset(run_dir: Path) -> tuple[Path, dict]:
    [manifest_path] = run_dir.glob("ingest-common-crawl*/data/manifest.json")
    return manifest_path.parent, json.loads(manifest_path.read_text())


def _urls(folder: Path, manifest: dict) -> dict[str, list[str]]:
    return {split: [doc["url"] for entry in manifest["splits"][split]["files"]
                    for doc in read_documents(folder / entry["path"])] for split in ("train", "validation")}


def _params(server: SeaweedS3, dedup_tasks: int) -> PipelineParams:
    return PipelineParams(data_sources="common_crawl", cc_crawl_id=WIDE_CRAWL_ID, cc_endpoint_url=server.endpoint_url,
                          cc_max_records=0, cc_max_files=10, cc_shards=SHARDS, dedup_tasks=dedup_tasks,
                          val_fraction=0.25)


def _single(params: PipelineParams, out: Path) -> dict:
    """What `python -m neuroq.ingest` writes for the same window in one process."""
    config = params.ingest_config([params.common_crawl_config()], str(out))
    config = dataclasses.replace(config, output=dataclasses.replace(config.output, format="parquet",
                                                                    val_fraction=params.val_fraction))
    return run_ingest(config).manifest


def test_fanned_out_crawl_ingest_equals_one_process_through_a_failed_attempt_and_a_cached_rerun(crawl_s3, tmp_path):
    params = _params(crawl_s3, DEDUP_TASKS)
    single = _single(params, tmp_path / "single")

    handler = _RestartOnRetry(crawl_s3)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        # The plan needs no S3 (cc_max_files is set); every shard task's first attempt finds the endpoint down.
        crawl_s3.stop(keep_data=True)
        [first] = _run(params, tmp_path / "kfp")
        second = _run(params, tmp_path / "kfp")
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)

    assert len(handler.failed_attempts) >= 1, "no shard task failed: the retry was not exercised"
    assert all("ingest-cc-shard" in message for message in handler.failed_attempts)
    folder, fanned_out = _dataset(first)
    assert _urls(folder, fanned_out) == _urls(tmp_path / "single", single)
    assert fanned_out["stages"] == single["stages"]
    assert fanned_out["splits"] == single["splits"]  # the same Parquet files, byte for byte
    [source] = fanned_out["sources"]
    assert len(source["shards"]) == SHARDS
    assert source["events"]["wet_files_corrupt"] == 2 and source["events"]["wet_files_unreadable"] == 1

    [summary] = first.glob("ingest-common-crawl*/summary")
    text = summary.read_text()
    assert "| dedup |" in text and "wet_files_unreadable" in text and text.count("\n| 3 |") == 1

    # The dedup fanned out: each partition task found its own pairs, the cluster step saw them all (a pair found in
    # the bands of two partitions is one pair to the cluster step).
    reports = [json.loads(path.read_text()) for path in first.glob("**/dedup-partition/pairs/partition.json")]
    assert sorted(report["index"] for report in reports) == list(range(DEDUP_TASKS))
    assert sum(report["candidate_pairs"] for report in reports) >= source["dedup_stages"]["candidate_pairs"] > 0

    # Same parameters again: plan, shard tasks, the dedup stages and the write all come from kfp.local's cache
    # (one entry each), so the rerun writes no task output at all.
    assert len(list((tmp_path / "kfp" / ".kfp_cache").glob("*.json"))) == 1 + SHARDS + 1 + DEDUP_TASKS + 1 + 1
    assert second == []


def test_a_crawl_pipeline_built_without_the_dedup_sub_dag_equals_one_process(crawl_s3, tmp_path):
    params = _params(crawl_s3, 1)
    single = _single(params, tmp_path / "single")
    [run] = _run(params, tmp_path / "kfp", dedup_fan_out=False)

    folder, manifest = _dataset(run)
    assert _urls(folder, manifest) == _urls(tmp_path / "single", single)
    assert manifest["stages"] == single["stages"]
    assert manifest["splits"] == single["splits"]
    assert not list(run.glob("dedup-partition*")) and not list(run.glob("**/partition.json"))
