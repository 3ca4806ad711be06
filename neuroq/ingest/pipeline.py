"""``run_ingest``: every source -> quality filters -> dedup -> sharded output + manifest.json.

The manifest is the dataset's lineage record, shaped for the pipeline to log without reading shards
(neuroq never imports mlflow; this is how a pipeline step can, checked with MLflow 3.17)::

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    m = result.manifest
    dataset = MetaDataset(source=resolve_dataset_source(str(result.output_dir)), name="neuroq-ingest",
                          digest=m["content_digest"].removeprefix("sha256:")[:16])
    mlflow.log_input(dataset, context="training", tags={"documents": str(m["documents_out"])})
    mlflow.log_dict(m, "ingest/manifest.json")

``stages`` gives the counts in, out and dropped per reason at each step (source, quality, dedup), overall
and per source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroq.errors import ConfigError
from neuroq.ingest.commoncrawl import iter_commoncrawl
from neuroq.ingest.config import CommonCrawlConfig, HFSourceConfig, IngestConfig, SourceConfig
from neuroq.ingest.dedup import Deduplicator
from neuroq.ingest.document import Document, SourceStats
from neuroq.ingest.huggingface import iter_huggingface
from neuroq.ingest.output import SPLITS, ShardedWriter
from neuroq.ingest.quality import QualityFilter

__all__ = ["MANIFEST_FORMAT", "IngestResult", "SourceRun", "iter_source", "publish", "run_ingest", "stage_counts",
           "staged_folder", "write_json"]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "neuroq-ingest-manifest"


@dataclass(frozen=True)
class IngestResult:
    output_dir: Path
    manifest: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / "manifest.json"

    @property
    def documents(self) -> int:
        return self.manifest["documents_out"]

    def files(self, split: str) -> list[Path]:
        """The shard files of ``split`` ("train" or "validation"), in order."""
        return [self.output_dir / entry["path"] for entry in self.manifest["splits"][split]["files"]]


def iter_source(source: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    if isinstance(source, HFSourceConfig):
        return iter_huggingface(source, stats)
    if isinstance(source, CommonCrawlConfig):
        return iter_commoncrawl(source, stats)
    raise ConfigError(f"unknown source type {type(source).__name__}")


def _source_uri(source: SourceConfig) -> str:
    if isinstance(source, CommonCrawlConfig):
        endpoint = source.endpoint_url or "aws"
        return f"s3://{source.bucket}/{source.wet_paths_key} ({endpoint})"
    files = f" {list(source.data_files)}" if source.data_files else ""
    return f"{source.path}{files}"


def stage_counts(stage_in: int, stage_out: int, dropped: Counter[str], **extra: Any) -> dict[str, Any]:
    return {"in": stage_in, "out": stage_out, "dropped": dict(sorted(dropped.items())), **extra}


def _sum_stage(entries: list[dict[str, Any]]) -> dict[str, Any]:
    dropped: Counter[str] = Counter()
    for entry in entries:
        dropped.update(entry["dropped"])
    return stage_counts(sum(e["in"] for e in entries), sum(e["out"] for e in entries), dropped)


def _prepare_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"OutputConfig.output_dir {path} is a file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"OutputConfig.output_dir {path} is not empty: choose another folder or set overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)


class SourceRun:
    """One source streamed through the quality filters (if it asks for them), counting as it goes.

    Iterate it for the documents that reach dedup, in source order; ``report(...)`` with the dedup counts then
    gives the manifest's entry for the source. The single-process ingest and each shard task of the sharded one
    (``neuroq.ingest.sharded``) read their sources through this, so both filter the same way.
    """

    def __init__(self, source: SourceConfig, quality: QualityFilter) -> None:
        self.source = source
        self.quality = quality
        self.stats = SourceStats(source.source_label, source.KIND, _source_uri(source))
        self.quality_dropped: Counter[str] = Counter()
        self.quality_in = self.quality_out = self.lines_removed = 0

    def __iter__(self) -> Iterator[Document]:
        for doc in iter_source(self.source, self.stats):
            if self.source.apply_quality_filters:
                self.quality_in += 1
                verdict = self.quality(doc.text)
                self.lines_removed += verdict.boilerplate_lines_removed
                if not verdict.kept:
                    self.quality_dropped[verdict.reason] += 1
                    continue
                self.quality_out += 1
                doc = dataclasses.replace(doc, text=verdict.text)
            yield doc

    def report(self, dedup_in: int, kept: int, dedup_dropped: Counter[str]) -> dict[str, Any]:
        stats = self.stats
        logger.info("%s: %d records in, %d documents out", stats.label, stats.records_read, kept)
        return {
            "label": stats.label,
            "kind": stats.kind,
            "uri": stats.uri,
            "documents_out": kept,
            "stages": {
                "source": stage_counts(stats.records_read, stats.documents, stats.dropped),
                "quality": stage_counts(self.quality_in, self.quality_out, self.quality_dropped,
                                        boilerplate_lines_removed=self.lines_removed),
                "dedup": stage_counts(dedup_in, kept, dedup_dropped),
            },
            "events": dict(sorted(stats.events.items())),
            "failed_files": stats.failed_files,
        }


def _ingest_source(source: SourceConfig, quality: QualityFilter, dedup: Deduplicator,
                   writer: ShardedWriter) -> dict[str, Any]:
    """Stream one source through quality (if the source asks for it) and dedup into ``writer``; its report."""
    run = SourceRun(source, quality)
    dedup_dropped: Counter[str] = Counter()
    dedup_in = kept = 0
    for doc in run:
        dedup_in += 1
        reason = dedup.check(doc.text)
        if reason:
            dedup_dropped[reason] += 1
            continue
        writer.write(doc)
        kept += 1
    return run.report(dedup_in, kept, dedup_dropped)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A sibling temporary folder to write into, renamed to ``out`` (replacing it) when the block succeeds and
    removed when it fails: ``out`` appears complete or not at all, also when a retried task rewrites it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(config: IngestConfig, write: Callable[[ShardedWriter], list[dict[str, Any]]]) -> IngestResult:
    """Write an output folder: ``write(writer)`` fills the shards and returns one report per source, then the
    manifest goes beside them, all through ``staged_folder``.
    """
    out = Path(config.output.output_dir).expanduser()
    _prepare_output_dir(out, config.output.overwrite)
    started = time.perf_counter()
    with staged_folder(out) as staging:
        writer = ShardedWriter(config.output, staging)
        reports = write(writer)
        written = writer.close()
        stages = {stage: _sum_stage([r["stages"][stage] for r in reports]) for stage in ("source", "quality", "dedup")}
        stages["quality"]["boilerplate_lines_removed"] = sum(
            r["stages"]["quality"]["boilerplate_lines_removed"] for r in reports)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "config": config.to_dict(),
            "sources": reports,
            "stages": stages,
            "documents_in": stages["source"]["in"],
            "documents_out": sum(written["splits"][s]["documents"] for s in SPLITS),
            "characters_out": sum(written["splits"][s]["characters"] for s in SPLITS),
            "record_fields": {"id": "string", "source": "string", "url": "string or null", "text": "string",
                              "meta": "object (a JSON string in Parquet)"},
            **written,
        }
        write_json(staging / "manifest.json", manifest)
    logger.info("ingest done in %.1fs: %d of %d records kept -> %s (%s)", time.perf_counter() - started,
                manifest["documents_out"], manifest["documents_in"], out, manifest["content_digest"])
    return IngestResult(output_dir=out, manifest=manifest)


def run_ingest(config: IngestConfig) -> IngestResult:
    """Read every source in order, filter, deduplicate across sources, write shards and manifest.json."""
    if not config.sources:
        raise ConfigError("IngestConfig.sources is empty: add a HFSourceConfig or CommonCrawlConfig")
    quality = QualityFilter(config.quality)
    dedup = Deduplicator(config.dedup)
    return publish(config, lambda writer: [_ingest_source(source, quality, dedup, writer)
                                           for source in config.sources])
