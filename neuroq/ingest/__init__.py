"""Data ingest: Hugging Face datasets and Common Crawl WET files into clean, deduplicated Japanese text.

    from neuroq.ingest import IngestConfig, CommonCrawlConfig, HFSourceConfig, OutputConfig, run_ingest

    result = run_ingest(IngestConfig(
        sources=(HFSourceConfig(path="dialogues.jsonl", template="<USER>{q}<ASSISTANT>{a}"),
                 CommonCrawlConfig(crawl_id="CC-MAIN-2024-10", max_records=10_000)),
        output=OutputConfig(output_dir="data/ingest", format="parquet"),
    ))
    result.manifest["stages"]      # counts in/out and drop reasons per stage
    result.files("train")          # shard paths

At crawl scale the same ingest runs in shards (``plan_shards``, ``ingest_shard`` per task, ``dedup_shards``
across them) and keeps the same documents; see ``neuroq.ingest.sharded``.
Each source is also a plain generator of ``Document`` (``iter_huggingface``, ``iter_commoncrawl``), and each
step a class usable on its own (``QualityFilter``, ``Deduplicator``, ``ShardedWriter``).
Command line: ``python -m neuroq.ingest --help``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CorruptWetError": "neuroq.ingest.commoncrawl",
    "iter_commoncrawl": "neuroq.ingest.commoncrawl",
    "iter_wet_records": "neuroq.ingest.commoncrawl",
    "list_wet_files": "neuroq.ingest.commoncrawl",
    "make_s3_client": "neuroq.ingest.commoncrawl",
    "CommonCrawlConfig": "neuroq.ingest.config",
    "DedupConfig": "neuroq.ingest.config",
    "HFSourceConfig": "neuroq.ingest.config",
    "IngestConfig": "neuroq.ingest.config",
    "OutputConfig": "neuroq.ingest.config",
    "QualityConfig": "neuroq.ingest.config",
    "SourceConfig": "neuroq.ingest.config",
    "Deduplicator": "neuroq.ingest.dedup",
    "MinHasher": "neuroq.ingest.dedup",
    "Document": "neuroq.ingest.document",
    "SourceStats": "neuroq.ingest.document",
    "IngestError": "neuroq.ingest.errors",
    "SourceUnavailableError": "neuroq.ingest.errors",
    "clean_wiki40b": "neuroq.ingest.huggingface",
    "iter_huggingface": "neuroq.ingest.huggingface",
    "load_hf_dataset": "neuroq.ingest.huggingface",
    "ShardedWriter": "neuroq.ingest.output",
    "read_documents": "neuroq.ingest.output",
    "IngestResult": "neuroq.ingest.pipeline",
    "iter_source": "neuroq.ingest.pipeline",
    "run_ingest": "neuroq.ingest.pipeline",
    "QualityFilter": "neuroq.ingest.quality",
    "dedup_shards": "neuroq.ingest.sharded",
    "ingest_in_blocks": "neuroq.ingest.sharded",
    "ingest_shard": "neuroq.ingest.sharded",
    "plan_shards": "neuroq.ingest.sharded",
    "QualityResult": "neuroq.ingest.quality",
    "script_stats": "neuroq.ingest.quality",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): a pipeline step that needs only the configs should not pay for importing `datasets`.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuroq.ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
