"""Data components: one ingest per source family, then one merge that deduplicates across them and splits.

Common Crawl (and a Hugging Face dataset with hf_shards > 1) is ingested in shards: `plan_cc_shards` splits the
sources, one `ingest_cc_shard` task per shard runs under `dsl.ParallelFor`; the dedup across shards fans out too,
one `dedup_partition` task per range of exact keys and share of the LSH band buckets, then `cluster_duplicates`
decides the drops from the candidate pairs and `ingest_common_crawl` writes what is left (what one process would
have kept).

The ingest components take only their own knobs and log nothing to MLflow, so they are pure functions of their
inputs and KFP's cache can skip them (re-reading Common Crawl is the slowest thing a rerun could do). Their
manifests travel as artifact metadata, and the merge step's MLflow run records them as dataset inputs.
"""

from typing import List

from kfp.dsl import Dataset, Input, Markdown, Output

from components.component import component


@component
def ingest_hf(params: dict, data: Output[Dataset]):
    """Read the bundled corpus and/or a Hugging Face dataset (hub name or local path) into JSONL shards.

    Writes an empty dataset when `data_sources` names neither, so the DAG is the same for every choice.
    """
    from components.params import PipelineParams
    from components.steps import data as steps

    manifest = steps.ingest_hf(PipelineParams.from_ingest_knobs(params), data.path)
    data.metadata.update(steps.lineage(manifest))


@component
def plan_cc_shards(params: dict) -> list:
    """The shards of the sharded sources (the Common Crawl window; a Hugging Face dataset when hf_shards > 1):
    one dict per ingest task, carrying that shard's ingest config."""
    from components.params import PipelineParams
    from components.steps import data as steps

    return steps.plan_common_crawl_shards(PipelineParams.from_ingest_knobs(params))


@component
def ingest_cc_shard(shard: dict, data: Output[Dataset]):
    """One shard: its WET files from S3 (or its block of the HF dataset) through the filters, with its exact keys
    and MinHash signatures."""
    from components.steps import data as steps

    manifest = steps.ingest_common_crawl_shard(shard, data.path)
    data.metadata.update({key: manifest[key] for key in ("index", "distinct", "seconds", "skipped") if key in manifest})


@component
def plan_dedup_partitions(params: dict) -> list:
    """The cross-shard dedup's partitions: one range of exact keys and an equal share of the LSH band buckets
    per task."""
    from components.params import PipelineParams
    from components.steps import data as steps

    return steps.plan_dedup_partitions(PipelineParams.from_ingest_knobs(params))


@component
def dedup_partition(partition: dict, shards: Input[List[Dataset]], pairs: Output[Dataset]):
    """Exact copies in this partition's key range and verified candidate pairs in its band buckets, over every
    shard."""
    from components.steps import data as steps

    report = steps.dedup_partition(partition, [shard.path for shard in shards], pairs.path)
    pairs.metadata.update({key: report[key] for key in ("exact_copies", "candidate_pairs", "seconds") if key in report})


@component
def cluster_duplicates(partitions: Input[List[Dataset]], drops: Output[Dataset]):
    """First seen wins (by shard, then record) over every partition's pairs: the documents to drop."""
    from components.steps import data as steps

    report = steps.cluster_duplicates([partition.path for partition in partitions], drops.path)
    drops.metadata.update({key: report[key] for key in ("candidate_pairs", "drops") if key in report})


@component
def ingest_common_crawl(
    params: dict,
    shards: Input[List[Dataset]],
    val_fraction: float,
    data: Output[Dataset],
    summary: Output[Markdown],
    drops: Input[Dataset] = None,
):
    """Write the shards' documents minus the drops, in shard order: the sharded sources' dataset. Without `drops`
    (a pipeline built without the dedup sub-DAG) it runs the dedup stages itself first.

    Writes an empty dataset when `data_sources` names no sharded source.
    """
    from components.params import PipelineParams
    from components.steps import data as steps

    manifest = steps.dedup_common_crawl_shards(PipelineParams.from_ingest_knobs(params),
                                               [shard.path for shard in shards], data.path, val_fraction,
                                               drops.path if drops else "")
    data.metadata.update(steps.lineage(manifest))
    with open(summary.path, "w", encoding="utf-8") as handle:
        handle.write(steps.ingest_summary(manifest))


@component
def merge_dedup_split(
    params: dict,
    run: dict,
    hf_data: Input[Dataset],
    train_data: Output[Dataset],
    val_data: Output[Dataset],
    cc_data: Input[Dataset] = None,
):
    """Deduplicate across sources (exact + MinHash near-duplicates) and split train/validation by hash. `cc_data`
    is absent from a pipeline built without the crawl's tasks."""
    from components.params import PipelineParams
    from components.steps import data as steps
    from components.steps.base import RunRef

    train_manifest, val_manifest = steps.merge_dedup_split(
        PipelineParams.from_dict(params),
        RunRef(**run),
        [data.path for data in (hf_data, cc_data) if data],
        train_data.path,
        val_data.path,
    )
    train_data.metadata.update(steps.lineage(train_manifest))
    val_data.metadata.update(steps.lineage(val_manifest))
