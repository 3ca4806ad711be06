"""A Hugging Face dataset in shards (hf_shards > 1) through the pipeline's sharded steps, task by task as the
KFP DAG runs them (plan -> shard tasks -> dedup partitions -> cluster -> write), against one process's ingest of
the same local `save_to_disk` dataset."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import datasets
import pytest

from components.params import PipelineParams
from components.steps import base
from components.steps import data as steps
from neuroq.errors import ConfigError
from neuroq.ingest import read_documents, run_ingest

_KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"


def _paragraph(rng: random.Random) -> str:
    return "。".join("".join(rng.choice(_KANA) for _ in range(rng.randint(15, 30))) for _ in range(12)) + "。"


def _rows() -> list[dict[str, str]]:
    """30 rows, one empty; the last ten repeat earlier ones: two exactly, six nearly (spaces or line breaks, a sentence added)."""
    rng = random.Random(7)
    texts = [_paragraph(rng) for _ in range(20)]
    texts += [texts[2].replace("。", "。 "), texts[3] + "追記です。", texts[11] + "追記です。", texts[0], "",
              texts[5] + "更新。", texts[14].replace("。", "。\n"),
              texts[18] + "終わり。", _paragraph(rng), texts[1]]
    return [{"text": text} for text in texts]


def _kept(folder: Path, manifest: dict) -> dict[str, list[str]]:
    return {split: [doc["id"] for entry in manifest["splits"][split]["files"]
                    for doc in read_documents(folder / entry["path"])] for split in ("train", "validation")}


def _saved(tmp_path: Path) -> PipelineParams:
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(_rows()).save_to_disk(str(folder))
    return PipelineParams(data_sources="huggingface", hf_path=str(folder), hf_shards=4, dedup_tasks=3,
                          val_fraction=0.25, experiment_name="hf-fanout")


def _single(params: PipelineParams, out: Path) -> dict:
    config = params.ingest_config([params.hf_source_config()], str(out))
    return run_ingest(dataclasses.replace(config, output=dataclasses.replace(
        config.output, format="parquet", val_fraction=params.val_fraction))).manifest


def _fanned_out(params: PipelineParams, tmp_path: Path, val_fraction: float) -> dict:
    """What the KFP tasks do, each into its own folder; plan items travel as JSON, with KFP's floats for integers."""
    plan = json.loads(json.dumps(steps.plan_common_crawl_shards(params)))
    assert [json.loads(item["config"])["sources"][0]["shard_index"] for item in plan] == [0, 1, 2, 3]
    shards = []
    for item in plan:
        shards.append(str(tmp_path / f"shard-{item['index']}"))
        steps.ingest_common_crawl_shard({**item, "index": float(item["index"])}, shards[-1])
    partitions = []
    for partition in steps.plan_dedup_partitions(params):
        partitions.append(str(tmp_path / f"partition-{partition['index']}"))
        steps.dedup_partition(json.loads(json.dumps(partition)), shards, partitions[-1])
    steps.cluster_duplicates(partitions, str(tmp_path / "drops"))
    return steps.dedup_common_crawl_shards(params, shards, str(tmp_path / "out"), val_fraction,
                                           str(tmp_path / "drops"))


def test_a_hugging_face_dataset_in_shards_keeps_what_one_process_keeps(tmp_path):
    params = _saved(tmp_path)
    single = _single(params, tmp_path / "single")
    fanned_out = _fanned_out(params, tmp_path, params.val_fraction)

    assert _kept(tmp_path / "out", fanned_out) == _kept(tmp_path / "single", single)
    assert fanned_out["stages"] == single["stages"]
    assert fanned_out["stages"]["dedup"]["dropped"] == {"exact_duplicate": 2, "near_duplicate": 6}
    assert fanned_out["splits"] == single["splits"]  # the same Parquet files, byte for byte
    assert [shard["dedup_in"] for shard in fanned_out["sources"][0]["shards"]] == [8, 8, 7, 6]  # the empty row is in shard 3


def test_the_training_pipeline_splits_the_sharded_stages_output_as_one_process_would(tmp_path):
    # The training pipeline's data steps at crawl scale: ingest_hf has nothing to read (the dataset is sharded),
    # the sharded stages write one split, and the merge only splits it, like one process's ingest.
    params = _saved(tmp_path)
    single = _single(params, tmp_path / "single")
    assert steps.ingest_hf(params, str(tmp_path / "hf"))["documents_out"] == 0
    _fanned_out(params, tmp_path, 0.0)
    run = base.start(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train, val = steps.merge_dedup_split(params, run, [str(tmp_path / "hf"), str(tmp_path / "out")],
                                         str(tmp_path / "train"), str(tmp_path / "val"))
    for split, written in (("train", train), ("validation", val)):
        texts = [doc["text"] for entry in single["splits"][split]["files"]
                 for doc in read_documents(tmp_path / "single" / entry["path"])]
        assert written["content_digest"] == base.text_digest(texts) and written["documents_out"] == len(texts)


def test_the_single_hf_task_reads_the_dataset_unless_it_is_sharded(tmp_path):
    # hf_shards 1 keeps the laptop run's one ingest_hf task; more hand the dataset to the sharded stages.
    assert steps.plan_common_crawl_shards(PipelineParams(data_sources="huggingface", hf_path="x.jsonl")) == [
        {"index": 0, "config": ""}]
    with pytest.raises(ConfigError, match="hf_shards > 1 needs hf_streaming off"):
        PipelineParams(data_sources="huggingface", hf_path="x.jsonl", hf_shards=2, hf_streaming=True)
