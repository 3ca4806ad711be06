"""The data steps with every source: the bundled corpus plus Common Crawl WET files on an S3-compatible server.

The ingest itself is tested in tests/ingest; this checks the pipeline's wiring: the `cc_*` knobs reach the
reader (endpoint, anonymous access, max_records), the ingest steps stay out of MLflow, and the merge step
deduplicates across sources, splits, and records every source as a dataset input of its run.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from warcio.warcwriter import WARCWriter

from components.params import PipelineParams
from components.steps import base, data
from neuroq.corpus import bundled_dialogues
from tests.support.s3server import SeaweedS3

pytestmark = pytest.mark.slow

CRAWL_ID = "CC-MAIN-2099-01"
WET_KEY = f"crawl-data/{CRAWL_ID}/segments/1/wet/part-00000.warc.wet.gz"


def _wet(pages: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True, warc_version="WARC/1.0")
    for url, text in pages.items():
        payload = text.encode("utf-8")
        writer.write_record(writer.create_warc_record(
            url, "conversion", payload=io.BytesIO(payload), length=len(payload), warc_content_type="text/plain",
            warc_headers_dict={"WARC-Identified-Content-Language": "jpn"},
        ))
    return buffer.getvalue()


def _article(start: int) -> str:
    """A page of ordinary Japanese prose: distinct sentences, one per line, each ending in 。."""
    answers = [doc.split("<ASSISTANT>", 1)[1].strip().rstrip("。") for doc in bundled_dialogues()]
    lines = [f"{answer}。" for answer in answers[start:start + 40] if len(answer) > 8]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def crawl(s3: SeaweedS3) -> SeaweedS3:
    """A one-file crawl laid out like Common Crawl's, in the session server's public `commoncrawl` bucket."""
    client = s3.client()
    client.put_object(Bucket="commoncrawl", Key=f"crawl-data/{CRAWL_ID}/wet.paths.gz",
                      Body=gzip.compress(f"{WET_KEY}\n".encode()))
    pages = {f"https://example.jp/{i}": _article(40 * i) for i in range(4)}
    pages["https://example.jp/copy"] = pages["https://example.jp/0"]  # an exact duplicate page
    client.put_object(Bucket="commoncrawl", Key=WET_KEY, Body=_wet(pages))
    return s3


def _merge_run(run: base.RunRef) -> tuple[Any, dict]:
    """The merge step's child run and the merged ingest manifest it logged."""
    client = MlflowClient(run.tracking_uri)
    [merge] = client.search_runs([client.get_experiment_by_name("data-steps").experiment_id],
                                 filter_string=f"tags.mlflow.parentRunId = '{run.parent_run_id}'")
    mlflow.set_tracking_uri(run.tracking_uri)
    return merge, mlflow.artifacts.load_dict(f"{merge.info.artifact_uri}/data/merged_manifest.json")


def _split_digests(folder: Path, manifest: dict) -> tuple[str, str]:
    """The text digests of an ingest's train and validation splits, as the merge names its split folders."""
    from neuroq.ingest import read_documents

    return tuple(base.text_digest(doc["text"] for entry in manifest["splits"][split]["files"]
                                  for doc in read_documents(folder / entry["path"]))
                 for split in ("train", "validation"))


def test_bundled_and_common_crawl_sources_are_merged_deduplicated_and_split(crawl, tmp_path):
    params = PipelineParams(
        data_sources="bundled,common_crawl", cc_crawl_id=CRAWL_ID, cc_endpoint_url=crawl.endpoint_url,
        cc_max_records=5, val_fraction=0.2, experiment_name="data-steps",
    )
    cc = data.ingest_common_crawl(params, str(tmp_path / "cc"))
    [source] = cc["sources"]
    assert source["label"] == f"cc:{CRAWL_ID}"
    assert source["stages"]["source"]["in"] == 5
    assert source["stages"]["dedup"]["dropped"] == {"exact_duplicate": 1}
    kept_pages = cc["documents_out"]
    assert kept_pages >= 1, source

    hf = data.ingest_hf(params, str(tmp_path / "hf"))
    assert [s["label"] for s in hf["sources"]] == ["bundled:chatterbot-corpus-japanese"]

    run = base.start(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train, val = data.merge_dedup_split(
        params, run, [str(tmp_path / "hf"), str(tmp_path / "cc")], str(tmp_path / "train"), str(tmp_path / "val")
    )
    assert train["documents_out"] > 0 and val["documents_out"] > 0
    assert {s["label"] for s in train["sources"]} == {"bundled:chatterbot-corpus-japanese", f"cc:{CRAWL_ID}"}
    written = [json.loads(line) for f in sorted((tmp_path / "train").glob("*.jsonl")) for line in f.open()]
    assert len(written) == train["documents_out"]
    assert train["content_digest"] == base.text_digest(record["text"] for record in written)

    merge, merged = _merge_run(run)
    inputs = {(i.dataset.name, i.tags[0].value) for i in merge.inputs.dataset_inputs}
    assert inputs == {
        ("bundled:chatterbot-corpus-japanese", "source"), (f"cc:{CRAWL_ID}", "source"),
        ("neuroq-training", "training"), ("neuroq-validation", "validation"),
    }
    assert merge.data.metrics[f"cc_{CRAWL_ID}.source_in"] == 5
    assert merged["documents_out"] == train["documents_out"] + val["documents_out"]


def test_the_merge_in_blocks_keeps_what_one_process_keeps(tmp_path, monkeypatch):
    from neuroq.ingest import HFSourceConfig, run_ingest, sharded

    params = PipelineParams(data_sources="bundled", val_fraction=0.2, experiment_name="data-steps")
    hf = data.ingest_hf(params, str(tmp_path / "hf"))
    monkeypatch.setattr(sharded, "BLOCK_DOCUMENTS", hf["documents_out"] // 5)  # six blocks, the last one short
    run = base.start(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train, val = data.merge_dedup_split(params, run, [str(tmp_path / "hf")], str(tmp_path / "train"),
                                        str(tmp_path / "val"))
    source = HFSourceConfig(path=str(tmp_path / "hf" / "train"), label=hf["sources"][0]["label"])
    single = run_ingest(params.ingest_config([source], str(tmp_path / "single"))).manifest

    _, merged = _merge_run(run)
    assert len(merged["sources"][0]["shards"]) == 6
    assert merged["stages"] == single["stages"] and single["stages"]["dedup"]["dropped"]
    assert train["dataset_digest"] == val["dataset_digest"] == single["content_digest"]
    assert (train["content_digest"], val["content_digest"]) == _split_digests(tmp_path / "single", single)


def test_one_dataset_deduplicated_with_the_same_settings_is_split_without_a_second_dedup(tmp_path):
    from dataclasses import replace

    from neuroq.ingest import HFSourceConfig, run_ingest

    params = PipelineParams(data_sources="bundled", val_fraction=0.2, experiment_name="data-steps")
    bundled = data.ingest_hf(params, str(tmp_path / "hf"))  # exact dedup only: the merge's near dedup still runs
    source = HFSourceConfig(path=str(tmp_path / "hf" / "train"), label=bundled["sources"][0]["label"])
    # What the crawl's stages write: deduplicated with the pipeline's own settings, all in one split.
    crawl_config = params.ingest_config([source], str(tmp_path / "crawl"))
    crawl = run_ingest(replace(crawl_config, output=replace(crawl_config.output, format="parquet",
                                                            val_fraction=0.0))).manifest
    assert crawl["stages"]["dedup"]["dropped"]
    run = base.start(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train, val = data.merge_dedup_split(params, run, [str(tmp_path / "crawl"), str(tmp_path / "empty")],
                                        str(tmp_path / "train"), str(tmp_path / "val"))

    _, merged = _merge_run(run)
    assert not merged["config"]["dedup"]["exact"] and not merged["config"]["dedup"]["near"]  # split only
    assert merged["documents_out"] == crawl["documents_out"]
    # The same split as deduplicating the crawl's dataset again would give.
    again = run_ingest(params.ingest_config([HFSourceConfig(path=str(tmp_path / "crawl" / "train"))],
                                            str(tmp_path / "again"))).manifest
    assert again["documents_out"] == crawl["documents_out"]
    assert (train["content_digest"], val["content_digest"]) == _split_digests(tmp_path / "again", again)
