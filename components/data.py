"""Data components: one ingest per source family, then one merge that deduplicates across them and splits.

The ingest components take only their own knobs and log nothing to MLflow, so they are pure functions of their
inputs and KFP's cache can skip them (re-reading Common Crawl is the slowest thing a rerun could do). Their
manifests travel as artifact metadata, and the merge step's MLflow run records them as dataset inputs.
"""

from kfp.dsl import Dataset, Input, Output

from components.component import component


@component
def ingest_hf(params: dict, data: Output[Dataset]):
    """Read the bundled corpus and/or a Hugging Face dataset (hub name or local path) into JSONL shards.

    Writes an empty dataset when `data_sources` names neither, so the DAG is the same for every choice.
    """
    from components.params import PipelineParams
    from components.steps import data as steps

    manifest = steps.ingest_hf(PipelineParams.from_dict(params), data.path)
    data.metadata.update(steps.lineage(manifest))


@component
def ingest_common_crawl(params: dict, data: Output[Dataset]):
    """Stream WET files of one crawl from S3 (or an S3-compatible endpoint), keep clean Japanese pages.

    Writes an empty dataset when `data_sources` does not name common_crawl.
    """
    from components.params import PipelineParams
    from components.steps import data as steps

    manifest = steps.ingest_common_crawl(PipelineParams.from_dict(params), data.path)
    data.metadata.update(steps.lineage(manifest))


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
