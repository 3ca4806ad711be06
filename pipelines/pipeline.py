"""The NeuroQ training pipeline as one KFP v2 DAG (no `from __future__ import annotations`: KFP reads the
annotations as types).

    start_run ─┬─> ingest_hf ───────────────────────────────────────────────────────────────────────────┐
               └─> plan_cc_shards ─> ParallelFor: ingest_cc_shard ─> dedup-stages ─> ingest_common_crawl ┴─> merge_dedup_split ─┐
                        train_tokenizer ─> train_neuroq ─> evaluate ─> register <──────────────────────────────────────────────┘
    plan_dedup_partitions ─> dedup-stages: ParallelFor: dedup_partition ─> cluster_duplicates

`build_common_crawl_pipeline` is the Common Crawl part alone (shards -> deduplicated, split dataset), for
ingesting a crawl once and training on it many times.

A compiled pipeline has every task, and its run parameters choose the sources: a run without a sharded source
still runs the crawl's tasks on one placeholder shard (KFP cannot hand an artifact out of a `dsl.If`: kfp.local
2.17 refuses `dsl.OneOf` over artifacts). A local run knows its parameters when it builds the DAG, so
`pipeline_for(params)` leaves out what they do not use: the crawl's tasks without a sharded source, the
`dedup-stages` sub-DAG when `dedup_tasks` is 1 (the write step then runs the stages itself, same answer).

Each knob is a pipeline parameter with the default of `PipelineParams`; `start_run` validates them all and
opens the parent MLflow run, later steps log into child runs of it. Run it locally, compile it or submit it
with `python -m pipelines.run {local,compile,submit}`.
"""

import dataclasses
from typing import Any, List

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input

from components.component import DEFAULT_IMAGE
from components.data import (
    cluster_duplicates,
    dedup_partition,
    ingest_cc_shard,
    ingest_common_crawl,
    ingest_hf,
    merge_dedup_split,
    plan_cc_shards,
    plan_dedup_partitions,
)
from components.evaluation import evaluate, register
from components.params import PipelineParams
from components.start import start_run
from components.training import train_neuroq, train_tokenizer

__all__ = [
    "CC_KNOBS",
    "CC_PIPELINE_NAME",
    "CC_SHARD_RESOURCES",
    "CC_SHARD_RETRIES",
    "CC_TASK_ENV",
    "CC_WRITE_RESOURCES",
    "CHECKPOINT_MOUNT",
    "DEDUP_CLUSTER_RESOURCES",
    "DEDUP_PARTITION_RESOURCES",
    "DEFAULT_PARALLELISM",
    "HF_KNOBS",
    "PIPELINE_NAME",
    "RUN_PARAMETERS",
    "TRAIN_RESOURCES",
    "TRAIN_RETRIES",
    "TRAIN_SHM_VOLUME",
    "build_common_crawl_pipeline",
    "build_pipeline",
    "neuroq_pipeline",
    "pipeline_for",
]

PIPELINE_NAME = "neuroq-training"
_D = PipelineParams()

# The only knobs each ingest step sees: its cache key then changes only when its own data would.
HF_KNOBS = ("data_sources", "hf_path", "hf_name", "hf_split", "hf_text_column", "hf_template", "hf_max_records",
            "hf_streaming", "hf_shards")
# The crawl's knobs include the dedup ones: near-dedup across the crawl happens in its shard stages.
# They include the Hugging Face knobs: with hf_shards > 1 the HF dataset goes through the same sharded stages
# (each shard task's cache key is its own shard's config, which its plan item carries).
CC_KNOBS = ("data_sources", "cc_crawl_id", "cc_endpoint_url", "cc_bucket", "cc_anonymous", "cc_max_records",
            "cc_max_files", "cc_first_file", "cc_shards", *HF_KNOBS[1:], "dedup_tasks", "near_dedup",
            "dedup_threshold", "seed")
CC_PIPELINE_NAME = "neuroq-common-crawl"
# Shard tasks running at once. KFP v2 fixes a ParallelFor's parallelism when the pipeline is compiled (the IR's
# iteratorPolicy.parallelismLimit is a number, not a parameter): `pipelines.run compile/submit --parallelism N`.
DEFAULT_PARALLELISM = 8
# One shard task: one core for gzip + filters + MinHash; its memory follows its own shard (its exact keys and
# signatures, ~0.6 KB per kept page, texts a row group at a time), see bench/RESULTS.md.
CC_SHARD_RESOURCES = {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2G", "memory_limit": "4G"}
# A dedup partition: k-way merges of its key range and band buckets over every shard (a row group per shard), one
# sorted run of its pairs; the cluster step: a merge of every run (a row group each) and one bit per document; the
# write: one shard's drops and a row group of texts at a time. None holds the crawl's pairs or texts; measured in
# bench/RESULTS.md.
DEDUP_PARTITION_RESOURCES = {"cpu_request": "1", "cpu_limit": "2", "memory_request": "1G", "memory_limit": "2G"}
DEDUP_CLUSTER_RESOURCES = {"cpu_request": "1", "cpu_limit": "2", "memory_request": "1G", "memory_limit": "2G"}
CC_WRITE_RESOURCES = {"cpu_request": "1", "cpu_limit": "2", "memory_request": "1G", "memory_limit": "2G"}
CC_SHARD_RETRIES = 3
# Arrow's default allocator (mimalloc) keeps the pages of freed row groups resident: on a 16k-document crawl a dedup
# partition peaked at 213 MB with it against 198 MB with the system allocator, the write at 258 against 223 MB.
CC_TASK_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
# Pipeline parameters that say where and how to run rather than what to train.
RUN_PARAMETERS = ("tracking_uri", "run_name", "parent_run_id", "image")

# On a cluster the train step asks for `gpus` NVIDIA GPUs (a pipeline parameter) and runs one torchrun process per
# GPU when there are several; kfp.local ignores these and uses what the machine has (the trainer picks CUDA when
# present). Limits leave room for token shards and the DataLoader.
TRAIN_RESOURCES = {
    "accelerator_type": "nvidia.com/gpu",
    "cpu_limit": "8",
    "memory_limit": "32G",
}
TRAIN_RETRIES = 2
# NCCL's intra-node transport lives in /dev/shm, which a container gets only 64 MB of by default: too small for
# several GPUs in one pod. A memory-backed emptyDir replaces it (it counts against the memory limit).
TRAIN_SHM_VOLUME = "dshm"
# Where `build_pipeline(checkpoint_pvc=...)` mounts the claim that keeps train_neuroq's checkpoints across retries.
CHECKPOINT_MOUNT = "/mnt/neuroq-checkpoints"
_KNOBS = frozenset(field.name for field in dataclasses.fields(PipelineParams))


def _dedup_stages(parallelism: int) -> Any:
    """The cross-shard dedup as a sub-DAG: one `dedup_partition` task per planned partition, then the cluster
    step. A sub-DAG because KFP's compiler cannot hand a `dsl.Collected` list to tasks inside a ParallelFor; as
    this DAG's input the list of shards reaches every partition task. The plan is made outside, and its items
    carry their config: a dict of the pipeline's parameters reaches a sub-DAG's tasks as "null"s on kfp.local."""

    @dsl.pipeline(name="dedup-stages")
    def dedup_stages(partitions: list, shards: Input[List[Dataset]], image: str) -> Dataset:
        with dsl.ParallelFor(partitions, parallelism=parallelism) as partition:
            pairs = dedup_partition(partition=partition, shards=shards)
            _size_crawl_task(pairs, DEDUP_PARTITION_RESOURCES)
            pairs.set_retry(num_retries=CC_SHARD_RETRIES, backoff_duration="30s")
        cluster = cluster_duplicates(partitions=dsl.Collected(pairs.outputs["pairs"]))
        _size_crawl_task(cluster, DEDUP_CLUSTER_RESOURCES)
        for task in (pairs, cluster):
            task.set_caching_options(True).set_container_image(image)
        return cluster.outputs["drops"]

    return dedup_stages


def _size_crawl_task(task: Any, resources: dict[str, str]) -> None:
    """A crawl task's CPU and memory, and the allocator that keeps its memory to what it holds."""
    (task.set_cpu_request(resources["cpu_request"]).set_cpu_limit(resources["cpu_limit"])
     .set_memory_request(resources["memory_request"]).set_memory_limit(resources["memory_limit"]))
    for name, value in CC_TASK_ENV.items():
        task.set_env_variable(name, value)


def _common_crawl_tasks(cc_params: Any, val_fraction: Any, parallelism: int, image: Any, dedup_stages: Any) -> Any:
    """Add the sharded sources' tasks to the pipeline being defined: plan, one ingest task per shard, the dedup
    stages across shards (`dedup_stages`; None: the write runs them in its own process), the write."""
    plan = plan_cc_shards(params=cc_params)
    with dsl.ParallelFor(plan.output, parallelism=parallelism) as shard:
        ingest = ingest_cc_shard(shard=shard)
        _size_crawl_task(ingest, CC_SHARD_RESOURCES)
        # S3 throttling and preempted nodes fail one shard; it retries alone, into a fresh output folder.
        ingest.set_retry(num_retries=CC_SHARD_RETRIES, backoff_duration="30s").set_container_image(image)
    tasks = [plan, ingest]
    # One dsl.Collected per consumer: the compiler loses track of the loop when one is handed to two tasks.
    if dedup_stages is None:
        crawl = ingest_common_crawl(params=cc_params, shards=dsl.Collected(ingest.outputs["data"]),
                                    val_fraction=val_fraction)
    else:
        partitions = plan_dedup_partitions(params=cc_params)
        stages = dedup_stages(partitions=partitions.output, shards=dsl.Collected(ingest.outputs["data"]), image=image)
        crawl = ingest_common_crawl(params=cc_params, shards=dsl.Collected(ingest.outputs["data"]),
                                    val_fraction=val_fraction, drops=stages.output)
        tasks.append(partitions)
    _size_crawl_task(crawl, CC_WRITE_RESOURCES)
    for task in (*tasks, crawl):
        task.set_caching_options(True)
        if task is not ingest:
            task.set_container_image(image)
    return plan, crawl


def build_common_crawl_pipeline(parallelism: int = DEFAULT_PARALLELISM, dedup_fan_out: bool = True) -> Any:
    """The crawl alone: its shards ingested and deduplicated into one train/validation dataset, no MLflow.
    Without `dedup_fan_out` the write step runs the dedup stages itself (for `dedup_tasks` 1)."""
    # KFP defines a sub-DAG outside the pipeline that uses it.
    dedup_stages = _dedup_stages(parallelism) if dedup_fan_out else None

    @dsl.pipeline(name=CC_PIPELINE_NAME, description="Ingest a Common Crawl window in shards, deduplicated.")
    def common_crawl_pipeline(
        params: dict = {"data_sources": "common_crawl", **{name: getattr(_D, name) for name in CC_KNOBS[1:]}},
        val_fraction: float = _D.val_fraction,
        image: str = DEFAULT_IMAGE,
    ):
        # One dict of the CC_KNOBS: the main pipeline lists them as parameters already.
        _common_crawl_tasks(params, val_fraction, parallelism, image, dedup_stages)

    return common_crawl_pipeline


def build_pipeline(checkpoint_pvc: str = "", parallelism: int = DEFAULT_PARALLELISM, sharded_sources: bool = True,
                   dedup_fan_out: bool = True) -> Any:
    """The pipeline; with `checkpoint_pvc`, train_neuroq mounts that PersistentVolumeClaim at CHECKPOINT_MOUNT and
    `checkpoint_dir` defaults to it, so a retried train task resumes from its last checkpoint (a compile-time
    choice: a pod spec cannot mount a claim whose name is empty). Without `sharded_sources` it has no crawl
    tasks (runs must then select no sharded source), without `dedup_fan_out` no `dedup-stages` sub-DAG (runs
    with any `dedup_tasks` keep the same documents, deduplicated in the write step's one process)."""
    # KFP defines a sub-DAG outside the pipeline that uses it.
    dedup_stages = _dedup_stages(parallelism) if sharded_sources and dedup_fan_out else None

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Ingest Japanese text, train a tokenizer and NeuroQ, evaluate, register.")
    def neuroq_pipeline(
        data_sources: str = _D.data_sources,
        hf_path: str = _D.hf_path,
        hf_name: str = _D.hf_name,
        hf_split: str = _D.hf_split,
        hf_text_column: str = _D.hf_text_column,
        hf_template: str = _D.hf_template,
        hf_max_records: int = _D.hf_max_records,
        hf_streaming: bool = _D.hf_streaming,
        cc_crawl_id: str = _D.cc_crawl_id,
        cc_endpoint_url: str = _D.cc_endpoint_url,
        cc_bucket: str = _D.cc_bucket,
        cc_anonymous: bool = _D.cc_anonymous,
        cc_max_records: int = _D.cc_max_records,
        cc_max_files: int = _D.cc_max_files,
        cc_first_file: int = _D.cc_first_file,
        cc_shards: int = _D.cc_shards,
        hf_shards: int = _D.hf_shards,
        dedup_tasks: int = _D.dedup_tasks,
        near_dedup: bool = _D.near_dedup,
        dedup_threshold: float = _D.dedup_threshold,
        val_fraction: float = _D.val_fraction,
        vocab_size: int = _D.vocab_size,
        mode: str = _D.mode,
        preset: str = _D.preset,
        n_embd: int = _D.n_embd,
        n_ff: int = _D.n_ff,
        n_head: int = _D.n_head,
        n_layer: int = _D.n_layer,
        seq_length: int = _D.seq_length,
        dropout: float = _D.dropout,
        max_steps: int = _D.max_steps,
        epochs: int = _D.epochs,
        batch_size: int = _D.batch_size,
        learning_rate: float = _D.learning_rate,
        warmup_steps: int = _D.warmup_steps,
        eval_interval: int = _D.eval_interval,
        seed: int = _D.seed,
        device: str = _D.device,
        gpus: int = _D.gpus,
        num_threads: int = _D.num_threads,
        checkpoint_dir: str = CHECKPOINT_MOUNT if checkpoint_pvc else _D.checkpoint_dir,
        ckpt_interval: int = _D.ckpt_interval,
        reuse_dir: str = _D.reuse_dir,
        sample_prompts: str = _D.sample_prompts,
        sample_max_new_tokens: int = _D.sample_max_new_tokens,
        experiment_name: str = _D.experiment_name,
        registered_model_name: str = _D.registered_model_name,
        min_improvement: float = _D.min_improvement,
        tracking_uri: str = "",
        run_name: str = "",
        parent_run_id: str = "",
        image: str = DEFAULT_IMAGE,
    ) -> str:
        # By name: locals() here also holds the factory's variables that the body uses.
        knobs = {name: value for name, value in locals().items() if name in _KNOBS}

        start = start_run(params=knobs, tracking_uri=tracking_uri, run_name=run_name, parent_run_id=parent_run_id)
        start.set_caching_options(False)  # it creates a new MLflow run every time
        params, run = start.outputs["params"], start.outputs["run"]

        hf = ingest_hf(params={name: knobs[name] for name in HF_KNOBS}).after(start)
        hf.set_caching_options(True)
        hf.set_retry(num_retries=3, backoff_duration="30s")  # remote sources fail transiently
        sources = {"hf_data": hf.outputs["data"]}
        if sharded_sources:
            # The merge splits train/validation across all sources, so the crawl's dataset stays in one split.
            plan, cc = _common_crawl_tasks({name: knobs[name] for name in CC_KNOBS}, 0.0, parallelism, image,
                                           dedup_stages)
            plan.after(start)
            sources["cc_data"] = cc.outputs["data"]

        split = merge_dedup_split(params=params, run=run, **sources)
        tok = train_tokenizer(params=params, run=run, train_data=split.outputs["train_data"])
        trained = train_neuroq(params=params, run=run, train_data=split.outputs["train_data"],
                               val_data=split.outputs["val_data"], tokenizer=tok.outputs["tokenizer"])
        (
            trained.set_accelerator_type(TRAIN_RESOURCES["accelerator_type"])
            .set_accelerator_limit(gpus)
            .set_cpu_limit(TRAIN_RESOURCES["cpu_limit"])
            .set_memory_limit(TRAIN_RESOURCES["memory_limit"])
            # A preempted GPU node is the usual failure; each attempt opens a fresh child run under the same
            # parent, and resumes from the last checkpoint when the pipeline has a checkpoint_dir.
            .set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s")
        )
        kubernetes.empty_dir_mount(trained, volume_name=TRAIN_SHM_VOLUME, mount_path="/dev/shm", medium="Memory")
        # GPU node pools are commonly tainted so that only pods asking for GPUs land there.
        kubernetes.add_toleration(trained, key=TRAIN_RESOURCES["accelerator_type"], operator="Exists",
                                  effect="NoSchedule")
        if checkpoint_pvc:
            kubernetes.mount_pvc(trained, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
        scored = evaluate(params=params, run=run, model=trained.outputs["model"], val_data=split.outputs["val_data"])
        registered = register(params=params, run=run, model=trained.outputs["model"],
                              train_data=split.outputs["train_data"], val_data=split.outputs["val_data"],
                              metrics=scored.outputs["metrics"])
        # Every step past the ingest writes to MLflow under this run's parent: a cache hit would skip that logging
        # (and the registration) while reporting success, so those steps always run.
        for task in (split, tok, trained, scored, registered):
            task.set_caching_options(False)
        for task in (start, hf, split, tok, trained, scored, registered):
            task.set_container_image(image)
        return registered.output

    return neuroq_pipeline


neuroq_pipeline = build_pipeline()


def pipeline_for(params: PipelineParams) -> Any:
    """The pipeline with only the tasks that `params` use, for a run that knows them when it builds the DAG
    (kfp.local): no crawl tasks without a sharded source, no dedup sub-DAG when `dedup_tasks` is 1."""
    from components.steps.data import sharded_sources  # imports MLflow: only a local run pays for it

    return build_pipeline(sharded_sources=bool(sharded_sources(params)), dedup_fan_out=params.dedup_tasks > 1)
