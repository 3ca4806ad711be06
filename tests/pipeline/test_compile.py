"""The compiled pipeline: the train task asks a cluster for `gpus` GPUs in a pod fit for NCCL (and, compiled with
a checkpoint claim, mounts it), and every knob is a pipeline parameter."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import yaml
from kfp import compiler

from components.params import PipelineParams
from pipelines.pipeline import (
    CC_SHARD_RESOURCES,
    CC_SHARD_RETRIES,
    CC_TASK_ENV,
    CHECKPOINT_MOUNT,
    DEDUP_PARTITION_RESOURCES,
    DEFAULT_PARALLELISM,
    RUN_PARAMETERS,
    TRAIN_RESOURCES,
    TRAIN_RETRIES,
    TRAIN_SHM_VOLUME,
    neuroq_pipeline,
    pipeline_for,
)
from pipelines.run import main

REPO = Path(__file__).resolve().parents[2]


def test_compiled_yaml_requests_gpus_cpu_and_memory_for_the_train_task(tmp_path):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())

    train_task = spec["root"]["dag"]["tasks"]["train-neuroq"]
    executor_label = spec["components"][train_task["componentRef"]["name"]]["executorLabel"]
    executor = spec["deploymentSpec"]["executors"][executor_label]
    resources = executor["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    # The GPU count is the `gpus` pipeline parameter, resolved when the run starts.
    assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
    assert train_task["inputs"]["parameters"]["pipelinechannel--gpus"] == {"componentInputParameter": "gpus"}
    assert spec["root"]["inputDefinitions"]["parameters"]["gpus"]["defaultValue"] == PipelineParams().gpus == 1
    assert resources["resourceCpuLimit"] == TRAIN_RESOURCES["cpu_limit"]
    assert resources["resourceMemoryLimit"] == TRAIN_RESOURCES["memory_limit"]
    assert train_task["retryPolicy"]["maxRetryCount"] == TRAIN_RETRIES
    # A cache hit would skip the MLflow logging and the registration: those steps never use the cache.
    assert train_task["cachingOptions"] == {}
    assert spec["root"]["dag"]["tasks"]["ingest-common-crawl"]["cachingOptions"] == {"enableCache": True}

    # NCCL needs more /dev/shm than a container's 64 MB default; GPU nodes are often tainted.
    pod = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor_label]
    assert pod["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "volumeName": TRAIN_SHM_VOLUME}]
    assert pod["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]

    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["max_steps"]["defaultValue"] == PipelineParams().max_steps
    assert inputs["mode"]["defaultValue"] == "layered"


def test_pipeline_parameters_are_exactly_the_params_fields_plus_run_settings():
    knobs = {field.name for field in dataclasses.fields(PipelineParams)}
    signature = inspect.signature(neuroq_pipeline.pipeline_func)
    assert set(signature.parameters) == knobs | set(RUN_PARAMETERS)
    defaults = PipelineParams()
    for name in knobs:
        assert signature.parameters[name].default == getattr(defaults, name), name


def test_a_checkpoint_pvc_is_mounted_on_the_train_task_alone_and_becomes_checkpoint_dirs_default(tmp_path):
    plain, with_pvc = tmp_path / "plain.yaml", tmp_path / "pvc.yaml"
    assert main(["compile", "--out", str(plain)]) == 0
    assert main(["compile", "--out", str(with_pvc), "--checkpoint-pvc", "neuroq-checkpoints"]) == 0
    spec, platform = yaml.safe_load_all(with_pvc.read_text())

    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = {label: pod["pvcMount"] for label, pod in executors.items() if "pvcMount" in pod}
    train_task = spec["root"]["dag"]["tasks"]["train-neuroq"]
    train_label = spec["components"][train_task["componentRef"]["name"]]["executorLabel"]
    assert list(mounts) == [train_label]
    [mount] = mounts[train_label]
    assert mount["mountPath"] == CHECKPOINT_MOUNT
    assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "neuroq-checkpoints"
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["checkpoint_dir"]["defaultValue"] == CHECKPOINT_MOUNT
    # Without the option: no claim, and checkpoints stay scratch (a claim with an empty name cannot be mounted).
    plain_spec, plain_platform = yaml.safe_load_all(plain.read_text())
    assert "pvcMount" not in str(plain_platform)
    assert plain_spec["root"]["inputDefinitions"]["parameters"]["checkpoint_dir"]["defaultValue"] == ""


def test_the_claim_deploy_k8s_creates_is_the_one_the_docs_compile_with():
    [claim] = yaml.safe_load_all((REPO / "deploy" / "k8s" / "pipeline" / "checkpoints-pvc.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert f"--checkpoint-pvc {claim['metadata']['name']}" in (REPO / "docs" / "deploy.md").read_text()


def test_compiled_yaml_fans_the_crawl_out_over_shard_tasks_with_their_parallelism_resources_and_retries(tmp_path):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out), "--parallelism", "16"]) == 0
    spec, _ = yaml.safe_load_all(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]

    [loop_name] = [name for name, task in tasks.items() if "parameterIterator" in task]
    loop = tasks[loop_name]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 16}
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--plan-cc-shards-Output"}
    assert loop["dependentTasks"] == ["plan-cc-shards"]
    shard_task = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["ingest-cc-shard"]
    assert shard_task["retryPolicy"]["maxRetryCount"] == CC_SHARD_RETRIES
    assert shard_task["cachingOptions"] == {"enableCache": True}
    label = spec["components"][shard_task["componentRef"]["name"]]["executorLabel"]
    resources = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
    assert resources["resourceCpuRequest"] == CC_SHARD_RESOURCES["cpu_request"]
    assert resources["resourceCpuLimit"] == CC_SHARD_RESOURCES["cpu_limit"]
    assert resources["resourceMemoryRequest"] == CC_SHARD_RESOURCES["memory_request"]
    assert resources["resourceMemoryLimit"] == CC_SHARD_RESOURCES["memory_limit"]
    # The shards' outputs are collected into the one task that deduplicates across them.
    artifacts = tasks["ingest-common-crawl"]["inputs"]["artifacts"]["shards"]
    assert artifacts == {"taskOutputArtifact": {"outputArtifactKey": "pipelinechannel--ingest-cc-shard-data",
                                                "producerTask": loop_name}}
    assert spec["root"]["inputDefinitions"]["parameters"]["cc_shards"]["defaultValue"] == PipelineParams().cc_shards
    # The dedup across shards fans out too: a sub-DAG with its own ParallelFor of partition tasks, each given every
    # shard, then the cluster step; the write takes the shards and the drops.
    stages = spec["components"][tasks["dedup-stages"]["componentRef"]["name"]]["dag"]["tasks"]
    assert tasks["dedup-stages"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"] == loop_name
    [partition_loop] = [task for task in stages.values() if "parameterIterator" in task]
    assert partition_loop["iteratorPolicy"] == {"parallelismLimit": 16}
    partition_task = spec["components"][partition_loop["componentRef"]["name"]]["dag"]["tasks"]["dedup-partition"]
    assert partition_task["cachingOptions"] == {"enableCache": True}
    label = spec["components"][partition_task["componentRef"]["name"]]["executorLabel"]
    resources = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
    assert resources["resourceMemoryLimit"] == DEDUP_PARTITION_RESOURCES["memory_limit"]
    assert resources["resourceCpuRequest"] == DEDUP_PARTITION_RESOURCES["cpu_request"]
    # The crawl tasks run with the allocator that returns freed row groups' memory.
    env = spec["deploymentSpec"]["executors"][label]["container"]["env"]
    assert env == [{"name": name, "value": value} for name, value in CC_TASK_ENV.items()]
    assert "cluster-duplicates" in stages
    assert tasks["ingest-common-crawl"]["inputs"]["artifacts"]["drops"]["taskOutputArtifact"]["producerTask"] == \
        "dedup-stages"
    # Without the option: the default parallelism.
    assert main(["compile", "--out", str(out)]) == 0
    default_loop = yaml.safe_load_all(out.read_text()).__next__()["root"]["dag"]["tasks"][loop_name]
    assert default_loop["iteratorPolicy"] == {"parallelismLimit": DEFAULT_PARALLELISM}


def _root_tasks(pipeline, tmp_path: Path) -> dict:
    compiler.Compiler().compile(pipeline, str(tmp_path / "pipeline.yaml"))
    return next(yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text()))["root"]["dag"]["tasks"]


def test_a_local_run_builds_only_the_crawl_tasks_its_parameters_use(tmp_path):
    # The defaults select no sharded source: no crawl task at all, the merge reads ingest_hf's dataset alone.
    tasks = _root_tasks(pipeline_for(PipelineParams()), tmp_path)
    assert sorted(tasks) == ["evaluate", "ingest-hf", "merge-dedup-split", "register", "start-run", "train-neuroq",
                             "train-tokenizer"]
    assert list(tasks["merge-dedup-split"]["inputs"]["artifacts"]) == ["hf_data"]
    # The crawl with dedup_tasks 1: shard tasks and the write, which runs the dedup stages itself.
    tasks = _root_tasks(pipeline_for(PipelineParams(data_sources="bundled,common_crawl")), tmp_path)
    assert {"plan-cc-shards", "ingest-common-crawl"} <= set(tasks)
    assert not {"plan-dedup-partitions", "dedup-stages"} & set(tasks)
    assert list(tasks["ingest-common-crawl"]["inputs"]["artifacts"]) == ["shards"]
    assert sorted(tasks["merge-dedup-split"]["inputs"]["artifacts"]) == ["cc_data", "hf_data"]
    # More dedup tasks: the dedup-stages sub-DAG hands the write its drops, as in the compiled pipeline.
    tasks = _root_tasks(pipeline_for(PipelineParams(data_sources="common_crawl", dedup_tasks=3)), tmp_path)
    assert tasks["ingest-common-crawl"]["inputs"]["artifacts"]["drops"]["taskOutputArtifact"]["producerTask"] == \
        "dedup-stages"
