"""The sharded ingest against a real S3 server (SeaweedFS) holding the wide fake crawl (see fake_crawl.py):
any number of shards keeps exactly what one process keeps, and copies across shards are caught."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.ingest.fake_crawl import WIDE_CORRUPT, WIDE_CRAWL_ID, WIDE_MISSING, wide_wet_key

from neuroq.errors import ConfigError
from neuroq.ingest import CommonCrawlConfig, DedupConfig, IngestConfig, OutputConfig, read_documents, run_ingest
from neuroq.ingest import sharded as sharded_module
from neuroq.ingest.dedup import MinHasher
from neuroq.ingest.sharded import (
    DropSet,
    ShardPlan,
    cluster_duplicates,
    dedup_partition,
    dedup_shards,
    first_seen_wins,
    ingest_in_blocks,
    ingest_shard,
    plan_partitions,
    plan_shards,
    write_deduplicated,
)


@pytest.fixture
def wide_config(crawl_config: CommonCrawlConfig) -> IngestConfig:
    source = dataclasses.replace(crawl_config, crawl_id=WIDE_CRAWL_ID)
    return IngestConfig(sources=(source,), output=OutputConfig(format="jsonl", val_fraction=0.25))


def _single(config: IngestConfig, out: Path) -> dict:
    return run_ingest(dataclasses.replace(config, output=dataclasses.replace(config.output, output_dir=str(out)))
                      ).manifest


def _shard_folders(config: IngestConfig, shards: int, tmp: Path) -> list[Path]:
    source = config.sources[0]
    folders = []
    for plan in plan_shards(source, shards):
        folders.append(tmp / f"shard-{plan.index}")
        ingest_shard(dataclasses.replace(config, sources=(plan.source(source),)), plan.index, folders[-1])
    return folders


def _sharded(config: IngestConfig, shards: int, tmp: Path, partitions: int = 16) -> dict:
    folders = _shard_folders(config, shards, tmp)
    output = dataclasses.replace(config.output, output_dir=str(tmp / "out"))
    return dedup_shards(dataclasses.replace(config, output=output), folders, partitions).manifest


def _kept(out: Path, manifest: dict) -> dict[str, list[str]]:
    return {split: [doc["url"] for entry in manifest["splits"][split]["files"]
                    for doc in read_documents(out / entry["path"])] for split in ("train", "validation")}


# 9 LSH bands with the default DedupConfig: 12 and 20 partitions cut bands into bucket ranges.
@pytest.mark.parametrize(("shards", "partitions"), [(1, 1), (4, 12), (10, 20)])
def test_any_number_of_shards_and_partitions_keeps_what_one_process_keeps(wide_config, tmp_path, shards, partitions):
    single = _single(wide_config, tmp_path / "single")
    sharded = _sharded(wide_config, shards, tmp_path / "sharded", partitions)

    assert _kept(tmp_path / "sharded" / "out", sharded) == _kept(tmp_path / "single", single)
    assert sharded["stages"] == single["stages"]
    assert sharded["content_digest"] == single["content_digest"]
    assert sharded["splits"] == single["splits"]  # same files, byte for byte (their sha256)
    assert len(sharded["sources"][0]["shards"]) == shards


def test_pairs_spilled_in_many_sorted_runs_merge_to_what_one_process_keeps(wide_config, tmp_path, monkeypatch):
    # One pair per run: the cluster step's merge of runs is all that orders the pairs and meets their repeats.
    monkeypatch.setattr(sharded_module, "_RUN_PAIRS", 1)
    single = _single(wide_config, tmp_path / "single")
    folders = _shard_folders(wide_config, 4, tmp_path)
    [plan] = plan_partitions(wide_config.dedup, 1)
    report = dedup_partition(wide_config, folders, plan, tmp_path / "partition")
    assert report["runs"] == len(list((tmp_path / "partition").glob("*-*.parquet"))) > 4
    cluster = cluster_duplicates([tmp_path / "partition"], tmp_path / "cluster")
    (tmp_path / "partition" / "pairs-00001.parquet").unlink()  # a lost run would keep its duplicates: refused
    with pytest.raises(ConfigError, match="sorted runs"):
        cluster_duplicates([tmp_path / "partition"], tmp_path / "cluster-of-less")
    monkeypatch.undo()  # one run: every pair once, as the cluster step counts them from the many
    assert cluster["candidate_pairs"] == dedup_partition(wide_config, folders, plan, tmp_path / "one-run")[
        "candidate_pairs"] > 0
    out = dataclasses.replace(wide_config, output=dataclasses.replace(wide_config.output,
                                                                     output_dir=str(tmp_path / "out")))
    manifest = write_deduplicated(out, folders, tmp_path / "cluster").manifest
    assert _kept(tmp_path / "out", manifest) == _kept(tmp_path / "single", single)
    assert manifest["stages"] == single["stages"]


def test_copies_in_other_shards_are_dropped_with_the_reason_one_process_gives(wide_config, tmp_path):
    manifest = _sharded(wide_config, 4, tmp_path)
    urls = [url for split in _kept(tmp_path / "out", manifest).values() for url in split]
    # First seen wins: the originals of shard 0 stay, their copies in shards 1-3 go.
    assert "https://kyoto-sanpo.example.jp/autumn-leaves" in urls
    for copy in ("https://matome.example.jp/kyoto-2024", "https://copy.example.com/kyoto-2024",
                 "https://copy.example.com/kyoto", "https://matome.example.jp/sleep",
                 "https://copy.example.com/miso", "https://matome.example.jp/garden",
                 "https://matome.example.jp/bousai", "https://copy.example.com/railway"):
        assert copy not in urls
    shards = manifest["sources"][0]["shards"]
    assert shards[0]["dedup_dropped"] == {"exact_duplicate": 1}  # the Kyoto mirror, within shard 0
    # Shard 1: the Kyoto near copy, the library page of shard 0 again.
    assert shards[1]["dedup_dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    # Shard 2: an exact copy of shard 1's near copy is a near duplicate (as in one process), the sleep page's
    # near copy, the miso page and the railway page again.
    assert shards[2]["dedup_dropped"] == {"exact_duplicate": 2, "near_duplicate": 2}
    assert shards[3]["dedup_dropped"] == {"exact_duplicate": 1, "near_duplicate": 2}


def test_corrupt_and_missing_wet_files_are_counted_in_their_shard_and_not_fatal(wide_config, tmp_path):
    manifest = _sharded(wide_config, 4, tmp_path)
    [source] = manifest["sources"]
    assert [(f["key"], f["reason"]) for f in source["failed_files"]] == [
        (wide_wet_key(WIDE_CORRUPT), "wet_files_corrupt"), (wide_wet_key(WIDE_MISSING), "wet_files_unreadable"),
        (wide_wet_key(5), "wet_files_corrupt")]
    assert source["events"]["wet_files_opened"] == 10
    assert [len(shard["failed_files"]) for shard in source["shards"]] == [1, 2, 0, 0]
    assert [shard["wet_files"] for shard in source["shards"]] == [3, 3, 2, 2]


def test_a_retried_shard_replaces_what_a_failed_attempt_left(wide_config, tmp_path):
    source = wide_config.sources[0]
    plan = plan_shards(source, 4)[1]
    folder = tmp_path / "shard"
    folder.mkdir()
    (folder / "docs.parquet").write_bytes(b"half-written by an attempt that died")
    ingest_shard(dataclasses.replace(wide_config, sources=(plan.source(source),)), plan.index, folder)
    manifest = json.loads((folder / "shard.json").read_text())
    assert manifest["index"] == 1 and manifest["dedup_in"] == 6  # files 3-5: 4 + 2 pages pass the filters
    assert len(pq.read_table(folder / "docs.parquet")) == 6
    assert sorted(p.name for p in folder.iterdir()) == ["bands", "docs.parquet", "keys.parquet", "shard.json"]


@pytest.mark.parametrize("partitions", [1, 2, 9, 12, 20])
def test_partitions_cut_the_band_buckets_into_equal_shares_that_cover_each_bucket_once(partitions):
    dedup = DedupConfig()
    bands = len(MinHasher(dedup).bands)
    plans = plan_partitions(dedup, partitions)
    shares = [sum(high - low for _, low, high in plan["buckets"]) for plan in plans]
    assert max(shares) - min(shares) <= 1  # each task's share of (band x bucket) is 1/partitions of it
    for band in range(bands):
        cells = sorted((low, high) for plan in plans for b, low, high in plan["buckets"] if b == band)
        assert cells[0][0] == 0 and cells[-1][1] == 2**32
        assert all(previous[1] == current[0] for previous, current in zip(cells, cells[1:]))
    key_ranges = [plan["key_range"] for plan in plans]
    assert key_ranges[0][0] == 0 and key_ranges[-1][1] == 2**16
    assert all(previous[1] == current[0] for previous, current in zip(key_ranges, key_ranges[1:]))


def test_each_partition_reads_only_its_share_of_every_shard(wide_config, tmp_path):
    folders = _shard_folders(wide_config, 4, tmp_path)
    distinct = sum(json.loads((folder / "shard.json").read_text())["distinct"] for folder in folders)
    reports = [dedup_partition(wide_config, folders, plan, tmp_path / f"partition-{plan['index']}")
               for plan in plan_partitions(wide_config.dedup, 20)]
    bands = len(MinHasher(wide_config.dedup).bands)
    # Every distinct text's exact key and band keys are read by exactly one partition.
    assert sum(report["key_rows"] for report in reports) == distinct
    assert sum(report["band_rows"] for report in reports) == distinct * bands
    assert max(report["band_rows"] for report in reports) < distinct * bands / 4  # no task reads a whole band


def test_shards_are_contiguous_windows_of_the_wet_list():
    source = CommonCrawlConfig(first_file=100, max_files=10)
    assert plan_shards(source, 4) == [ShardPlan(0, 100, 3), ShardPlan(1, 103, 3), ShardPlan(2, 106, 2),
                                      ShardPlan(3, 108, 2)]
    assert plan_shards(source, 50) == [ShardPlan(i, 100 + i, 1) for i in range(10)]  # never an empty shard
    with pytest.raises(ConfigError, match="num_shards"):
        plan_shards(source, 0)


def test_a_document_whose_only_earlier_neighbour_was_dropped_is_kept():
    # 1 is like 0, 2 is like 1 but not like 0: one pass keeps 0, drops 1 and keeps 2 (clusters would drop 2).
    assert set(first_seen_wins([(1, 0), (2, 1)])) == {1}
    assert set(first_seen_wins([(1, 0), (2, 0), (2, 1)])) == {1, 2}


def test_the_drop_set_holds_documents_of_any_shard_as_bits_and_lists_them_in_order():
    dropped = DropSet()
    ids = [(3 << 40) | 17, 5, (1 << 40) | 100_000, 5]
    for document in ids:
        dropped.add(document)
    assert list(dropped) == sorted(set(ids)) and len(dropped) == 3
    assert np.int64(5) in dropped and 6 not in dropped and (2 << 40) | 5 not in dropped and "5" not in dropped


def test_shards_written_with_other_dedup_settings_are_refused(wide_config, tmp_path):
    source = wide_config.sources[0]
    plan = plan_shards(source, 4)[3]
    ingest_shard(dataclasses.replace(wide_config, sources=(plan.source(source),)), plan.index, tmp_path / "s")
    other = dataclasses.replace(wide_config, dedup=DedupConfig(threshold=0.5),
                                output=dataclasses.replace(wide_config.output, output_dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match="dedup settings"):
        dedup_shards(other, [tmp_path / "s"])


def test_ingest_in_blocks_takes_one_count_per_whole_hugging_face_dataset(wide_config):
    with pytest.raises(ConfigError, match="one per source"):
        ingest_in_blocks(wide_config, [])
    with pytest.raises(ConfigError, match="whole Hugging Face datasets"):
        ingest_in_blocks(wide_config, [10])
