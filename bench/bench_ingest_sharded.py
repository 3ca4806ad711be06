"""The sharded Common Crawl ingest: per-task throughput and peak memory as shards grow, and the dedup stages'
memory per task against the number of documents, with the stages fanned out as the pipeline runs them. WET files are generated (bench_ingest's mixes) and served by a real
SeaweedFS S3 server on loopback; every task runs in its own process, as a KFP task would.

    python bench/bench_ingest_sharded.py                          # 1, 2, 4, 8 shards of 2 files each
    python bench/bench_ingest_sharded.py --files-per-shard 4 --records 3000
    python bench/bench_ingest_sharded.py --shards 1 --dedup-docs 1000 16000 --partitions 1 16 32
    python bench/bench_ingest_sharded.py --shards --dedup-docs --family-docs 8000 32000 --many-shards 64 1024
    python bench/bench_ingest_sharded.py --shards --dedup-docs --family-docs --many-shards --merge-docs 10000 80000

Weak scaling: each shard has the same number of files, so a crawl of N shards is N times larger and flat
per-task figures mean a task's cost depends on its own shard only. Shard tasks run one after another (CPU time
and peak RSS per task are what a cluster node would see); the dedup stages then run over all of them.

Two more tables stress what grows with the crawl in the dedup stages: --family-docs, pages in families of near
copies (the ja-families mix: ~200^2 / 2 candidate pairs per family), for the cluster step against its pairs; and
--many-shards, the same few documents per shard over more and more shards, for a partition's cost per shard it
reads. --merge-docs compares the training pipeline's merge in blocks (ingest_in_blocks) with one in-memory index,
and with the split alone (the merge of one dataset that the sharded stages deduplicated).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_ingest import generate_pages, write_wet
from pipelines.pipeline import CC_TASK_ENV
from tests.support.s3server import SeaweedS3

CRAWL_ID = "CC-MAIN-2099-50"

_TASK = """
import dataclasses, json, sys, time
from neuroq.ingest import CommonCrawlConfig, IngestConfig, OutputConfig
from neuroq.ingest.sharded import (ShardPlan, cluster_duplicates, dedup_partition, ingest_shard, plan_partitions,
                                   write_deduplicated)
args = json.loads(sys.argv[1])
source = CommonCrawlConfig(crawl_id=args["crawl"], endpoint_url=args["endpoint"], max_records=None)
config = IngestConfig(sources=(source,), output=OutputConfig(output_dir=args.get("out", ""), format="parquet",
                                                              val_fraction=0.05, overwrite=True))
started, cpu = time.perf_counter(), time.process_time()
if args["stage"] == "shard":
    manifests = [ingest_shard(IngestConfig(sources=(ShardPlan(**plan).source(source),)), plan["index"], out)
                 for plan, out in zip(args["plans"], args["outs"])]  # several: when only the later stages are timed
    result = {"records": sum(m["source"]["stages"]["source"]["in"] for m in manifests),
              "documents": sum(m["dedup_in"] for m in manifests),
              "bytes": sum(m["source"]["events"]["wet_bytes_read"] for m in manifests)}
elif args["stage"] == "partition":
    [partition] = [p for p in plan_partitions(config.dedup, args["partitions"]) if p["index"] == args["index"]]
    report = dedup_partition(config, args["shards"], partition, args["out"])
    result = {"pairs": report["candidate_pairs"], "band_rows": report["band_rows"], "runs": report["runs"]}
elif args["stage"] == "cluster":
    result = {"pairs": cluster_duplicates(args["partitions"], args["out"])["candidate_pairs"]}
elif args["stage"] == "merge":
    from neuroq.ingest import HFSourceConfig, ingest_in_blocks, run_ingest
    merge = dataclasses.replace(config, sources=(HFSourceConfig(path=args["data"]),))
    if args["mode"] == "split":  # the merge of one dataset deduplicated alike: no dedup, the split only
        merge = dataclasses.replace(merge, dedup=dataclasses.replace(merge.dedup, exact=False, near=False))
    result = (ingest_in_blocks(merge, [args["documents"]], args["block"]) if args["mode"] == "blocks"
              else run_ingest(merge))
    result = {"kept": result.manifest["documents_out"], "digest": result.manifest["content_digest"]}
else:
    manifest = write_deduplicated(config, args["shards"], args["drops"]).manifest
    result = {"documents": manifest["stages"]["dedup"]["in"], "kept": manifest["documents_out"]}
# VmHWM, this process's own peak: Linux carries the parent's peak into ru_maxrss across exec.
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
result.update(wall_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu, peak_mb=peak_kb / 1024)
print(json.dumps(result))
"""


def _task(**args: object) -> dict:
    # The environment the pipeline gives its crawl tasks (the allocator among it).
    done = subprocess.run([sys.executable, "-c", _TASK, json.dumps(args)], check=True, capture_output=True, text=True,
                          env={**os.environ, **CC_TASK_ENV})
    return json.loads(done.stdout.strip().splitlines()[-1])


def _upload_crawl(server: SeaweedS3, crawl: str, mix: str, files: int, records: int, tmp: Path) -> None:
    client = server.client()
    keys = []
    for index in range(files):
        key = f"crawl-data/{crawl}/segments/0/wet/{crawl}-{index:05d}.warc.wet.gz"
        path = tmp / f"{index}.warc.wet.gz"
        write_wet(generate_pages(mix, records, seed=index), path)
        client.upload_file(str(path), "commoncrawl", key)
        keys.append(key)
    client.put_object(Bucket="commoncrawl", Key=f"crawl-data/{crawl}/wet.paths.gz",
                      Body=gzip.compress("".join(f"{key}\n" for key in keys).encode(), mtime=0))


def _shards(server: SeaweedS3, crawl: str, mix: str, shards: int, records: int, tmp: Path) -> list[str]:
    """A crawl of one WET file of ``records`` per shard, ingested shard by shard in one process (its figures are
    not reported)."""
    _upload_crawl(server, crawl, mix, shards, records, tmp)
    outs = [str(tmp / crawl / f"shard-{index}") for index in range(shards)]
    _task(stage="shard", crawl=crawl, endpoint=server.endpoint_url, outs=outs,
          plans=[{"index": index, "first_file": index, "max_files": 1} for index in range(shards)])
    return outs


def _stages(server: SeaweedS3, crawl: str, shard_dirs: list[str], count: int, folder: Path) -> tuple[list, dict, dict]:
    """The dedup stages as the pipeline runs them, each task its own process: partitions, cluster, write."""
    parts = [_task(stage="partition", crawl=crawl, endpoint=server.endpoint_url, shards=shard_dirs,
                   partitions=count, index=i, out=str(folder / f"partition-{i}")) for i in range(count)]
    cluster = _task(stage="cluster", crawl=crawl, endpoint=server.endpoint_url, out=str(folder / "drops"),
                    partitions=[str(folder / f"partition-{i}") for i in range(count)])
    write = _task(stage="write", crawl=crawl, endpoint=server.endpoint_url, shards=shard_dirs,
                  drops=str(folder / "drops"), out=str(folder / "out"))
    return parts, cluster, write


def _one_partition(server: SeaweedS3, mix: str, shards: int, records: int, tmp: Path) -> tuple[dict, dict, dict]:
    """A fresh crawl of ``shards`` WET files through the dedup stages with one partition task."""
    crawl = f"CC-MAIN-2099-{mix}-{shards}x{records}"
    [part], cluster, write = _stages(server, crawl, _shards(server, crawl, mix, shards, records, tmp), 1,
                                     tmp / crawl / "p1")
    return part, cluster, write


def _table(title: str, *columns: str) -> None:
    print(f"\n### {title}\n\n| {' | '.join(columns)} |\n|{'---:|' * len(columns)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--files-per-shard", type=int, default=2)
    parser.add_argument("--records", type=int, default=1500, help="records per WET file")
    parser.add_argument("--mix", choices=("cc-like", "ja-only"), default="cc-like")
    parser.add_argument("--dedup-docs", type=int, nargs="*", default=[1000, 4000, 16000],
                        help="Japanese documents (ja-only mix) for the dedup stages' memory")
    parser.add_argument("--dedup-shards", type=int, default=4,
                        help="shards the dedup stages' documents are ingested in (a partition reads each of them)")
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 16],
                        help="dedup partition tasks (dedup_tasks) to run over each document count")
    parser.add_argument("--family-docs", type=int, nargs="*", default=[2000, 8000],
                        help="documents in families of near copies (ja-families mix), for the cluster step")
    parser.add_argument("--many-shards", type=int, nargs="*", default=[16, 128],
                        help="shard counts, for a partition's cost per shard it reads")
    parser.add_argument("--many-shards-docs", type=int, default=20, help="documents per shard of --many-shards")
    parser.add_argument("--merge-docs", type=int, nargs="*", default=[10000, 40000],
                        help="documents of one local dataset, for merge_dedup_split's dedup in blocks")
    parser.add_argument("--merge-block", type=int, default=5000, help="documents per block (BLOCK_DOCUMENTS)")
    args = parser.parse_args()

    with SeaweedS3(public_read_buckets=("commoncrawl",)) as server, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.shards:
            _shard_table(server, args, tmp)
        if args.dedup_docs:
            _table(f"Dedup stages as separate tasks over {args.dedup_shards} shards",
                   "documents", "partition tasks", "band rows read (max task)", "candidate pairs", "kept",
                   "partition peak RSS MB (max)", "cluster MB", "write MB", "partition s (max)", "cluster s",
                   "write s", "sorted runs")
            for docs in args.dedup_docs:
                crawl = f"CC-MAIN-2099-{docs}-{args.dedup_shards}"
                shard_dirs = _shards(server, crawl, "ja-only", args.dedup_shards, docs // args.dedup_shards, tmp)
                # Every partition count over the same shards: a cluster run sizes dedup_tasks to the documents, so
                # the figure to watch is the largest task's peak where documents / tasks stays the same.
                for count in args.partitions:
                    parts, cluster, write = _stages(server, crawl, shard_dirs, count, tmp / crawl / f"p{count}")
                    print(f"| {write['documents']:,} | {count} | {max(p['band_rows'] for p in parts):,} "
                          f"| {cluster['pairs']:,} | {write['kept']:,} | {max(p['peak_mb'] for p in parts):.0f} "
                          f"| {cluster['peak_mb']:.0f} | {write['peak_mb']:.0f} "
                          f"| {max(p['wall_s'] for p in parts):.2f} | {cluster['wall_s']:.2f} | {write['wall_s']:.2f} "
                          f"| {sum(p['runs'] for p in parts)} |")
        if args.family_docs:
            _table(f"Cluster step against candidate pairs: families of near copies, {args.dedup_shards} shards, "
                   "1 partition task", "documents", "kept", "candidate pairs (partition)", "sorted runs",
                   "distinct pairs (cluster)", "partition peak RSS MB", "cluster MB", "write MB", "partition s",
                   "cluster s")
            for docs in args.family_docs:
                part, cluster, write = _one_partition(server, "ja-families", args.dedup_shards,
                                                      docs // args.dedup_shards, tmp)
                print(f"| {write['documents']:,} | {write['kept']:,} | {part['pairs']:,} | {part['runs']} "
                      f"| {cluster['pairs']:,} | {part['peak_mb']:.0f} | {cluster['peak_mb']:.0f} "
                      f"| {write['peak_mb']:.0f} | {part['wall_s']:.2f} | {cluster['wall_s']:.2f} |")
        if args.merge_docs:
            _table(f"merge_dedup_split's dedup: run_ingest's in-memory index against ingest_in_blocks, blocks of "
                   f"{args.merge_block:,} documents, and the split alone", "documents", "kept", "same output",
                   "run_ingest peak RSS MB", "in blocks MB", "split only MB", "run_ingest s", "in blocks s",
                   "split only s")
            for docs in args.merge_docs:
                data = tmp / f"merge-{docs}.jsonl"
                data.write_text("".join(json.dumps({"text": page}, ensure_ascii=False) + "\n"
                                        for page in generate_pages("ja-only", docs, seed=docs)), encoding="utf-8")
                single, blocks, split = (
                    _task(stage="merge", crawl=CRAWL_ID, endpoint=server.endpoint_url, data=str(data), mode=mode,
                          documents=docs, block=args.merge_block, out=str(tmp / f"merge-{docs}-{mode}"))
                    for mode in ("index", "blocks", "split"))
                print(f"| {docs:,} | {single['kept']:,} | {single['digest'] == blocks['digest']} "
                      f"| {single['peak_mb']:.0f} | {blocks['peak_mb']:.0f} | {split['peak_mb']:.0f} "
                      f"| {single['wall_s']:.1f} | {blocks['wall_s']:.1f} | {split['wall_s']:.1f} |")
        if args.many_shards:
            _table(f"A partition against the shards it reads: {args.many_shards_docs} documents per shard, "
                   "1 partition task",
                   "shards", "documents", "band rows read", "partition peak RSS MB", "cluster MB", "write MB",
                   "partition s", "write s")
            for shards in args.many_shards:
                part, cluster, write = _one_partition(server, "ja-only", shards, args.many_shards_docs, tmp)
                print(f"| {shards:,} | {write['documents']:,} | {part['band_rows']:,} | {part['peak_mb']:.0f} "
                      f"| {cluster['peak_mb']:.0f} | {write['peak_mb']:.0f} "
                      f"| {part['wall_s']:.2f} | {write['wall_s']:.2f} |")


def _shard_table(server: SeaweedS3, args: argparse.Namespace, tmp: Path) -> None:
    """Per-task throughput and peak memory of the shard tasks, 1, 2, 4, 8 shards of the same size each."""
    files = max(args.shards) * args.files_per_shard
    _upload_crawl(server, CRAWL_ID, args.mix, files, args.records, tmp)
    _table(f"Shard tasks: {args.files_per_shard} files of {args.records} records ({args.mix}) per shard",
           "shards", "crawl records", "task", "records", "MB gz", "CPU s", "records/s", "MB/s gz", "peak RSS MB")
    for shards in args.shards:
        for index in range(shards):
            plan = {"index": index, "first_file": index * args.files_per_shard, "max_files": args.files_per_shard}
            r = _task(stage="shard", crawl=CRAWL_ID, endpoint=server.endpoint_url, plans=[plan],
                      outs=[str(tmp / f"run{shards}" / f"shard-{index}")])
            print(f"| {shards} | {shards * args.files_per_shard * args.records:,} | {index} | {r['records']:,} "
                  f"| {r['bytes'] / 1e6:.2f} | {r['cpu_s']:.2f} | {r['records'] / r['cpu_s']:,.0f} "
                  f"| {r['bytes'] / 1e6 / r['cpu_s']:.2f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
