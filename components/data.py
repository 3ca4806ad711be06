"""Data components: one ingest per source family, then one merge that deduplicates across them and splits.

Common Crawl is ingested in shards: `plan_cc_shards` splits the window of WET files, one `ingest_cc_shard` task
per shard runs under `dsl.ParallelFor`, and `ingest_common_crawl` deduplicates the shards across each other into
the crawl's dataset (what one process would have kept).

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
    """The shards of the Common Crawl window (contiguous ranges of WET files): one dict per ingest task."""
    from components.params import PipelineParams
    from components.steps import data as steps

    return steps.plan_common_crawl_shards(PipelineParams.from_ingest_knobs(params))


@component
def ingest_cc_shard(params: dict, shard: dict, data: Output[Dataset]):
    """Stream one shard's WET files from S3, keep clean Japanese pages, write their exact keys and signatures."""
    from components.params import PipelineParams
    from components.steps import data as steps

    manifest = steps.ingest_common_crawl_shard(PipelineParams.from_ingest_knobs(params), shard, data.path)
    data.metadata.update({key: manifest[key] for key in ("index", "distinct", "seconds", "skipped") if key in manifest})


@component
def ingest_common_crawl(
    params: dict,
    shards: Input[List[Dataset]],
    val_fraction: float,
    data: Output[Dataset],
    summary: Output[Markdown],
):
    """Deduplicate the shards across each other (exact by key range, MinHash LSH by band) into the crawl's dataset.

    Writes an empty dataset when `data_sources` does not name common_crawl.
    """
    from components.params import PipelineParams
    from components.steps import data as steps

    manifest = steps.dedup_common_crawl_shards(
        PipelineParams.from_ingest_knobs(params), [shard.path for shard in shards], data.path, val_fraction
    )
    data.metadata.update(steps.lineage(manifest))
    with open(summary.path, "w", encoding="utf-8") as handle:
        handle.write(steps.ingest_summary(manifest))


@component
def merge_dedup_split(
    params: dict,
    run: dict,
    hf_data: Input[Dataset],
    cc_data: Input[Dataset],
    train_data: Output[Dataset],
    val_data: Output[Dataset],
):
    """Deduplicate across sources (exact + MinHash near-duplicates) and split train/validation by hash."""
    from components.params import PipelineParams
    from components.steps import data as steps
    from components.steps.base import RunRef

    train_manifest, val_manifest = steps.merge_dedup_split(
        PipelineParams.from_dict(params),
        RunRef(**run),
        [hf_data.path, cc_data.path],
        train_data.path,
        val_data.path,
    )
    train_data.metadata.update(steps.lineage(train_manifest))
    val_data.metadata.update(steps.lineage(val_manifest))
