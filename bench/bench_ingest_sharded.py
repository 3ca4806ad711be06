"""The sharded Common Crawl ingest: per-task throughput and peak memory as shards grow, and the dedup stages'
memory per task against the number of documents, with the stages fanned out as the pipeline runs them. WET files are generated (bench_ingest's mixes) and served by a real
SeaweedFS S3 server on loopback; every task runs in its own process, as a KFP task would.

    python bench/bench_ingest_sharded.py                          # 1, 2, 4, 8 shards of 2 files each
    python bench/bench_ingest_sharded.py --files-per-shard 4 --records 3000
    python bench/bench_ingest_sharded.py --shards 1 --dedup-docs 1000 16000 --partitions 1 16 32

Weak scaling: each shard has the same number of files, so a crawl of N shards is N times larger and flat
per-task figures mean a task's cost depends on its own shard only. Shard tasks run one after another (CPU time
and peak RSS per task are what a cluster node would see); the dedup stages then run over all of them.
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
import json, sys, time
from neuroq.ingest import CommonCrawlConfig, IngestConfig, OutputConfig
from neuroq.ingest.sharded import (ShardPlan, cluster_duplicates, dedup_partition, ingest_shard, plan_partitions,
                                   write_deduplicated)
args = json.loads(sys.argv[1])
source = CommonCrawlConfig(crawl_id=args["crawl"], endpoint_url=args["endpoint"], max_records=None)
config = IngestConfig(sources=(source,), output=OutputConfig(output_dir=args["out"], format="parquet",
                                                              val_fraction=0.05, overwrite=True))
started, cpu = time.perf_counter(), time.process_time()
if args["stage"] == "shard":
    plan = ShardPlan(**args["plan"])
    manifest = ingest_shard(IngestConfig(sources=(plan.source(source),)), plan.index, args["out"])
    result = {"records": manifest["source"]["stages"]["source"]["in"], "documents": manifest["dedup_in"],
              "bytes": manifest["source"]["events"]["wet_bytes_read"]}
elif args["stage"] == "partition":
    [partition] = [p for p in plan_partitions(config.dedup, args["partitions"]) if p["index"] == args["index"]]
    report = dedup_partition(config, args["shards"], partition, args["out"])
    result = {"pairs": report["candidate_pairs"], "band_rows": report["band_rows"]}
elif args["stage"] == "cluster":
    result = {"pairs": cluster_duplicates(args["partitions"], args["out"])["candidate_pairs"]}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--files-per-shard", type=int, default=2)
    parser.add_argument("--records", type=int, default=1500, help="records per WET file")
    parser.add_argument("--mix", choices=("cc-like", "ja-only"), default="cc-like")
    parser.add_argument("--dedup-docs", type=int, nargs="+", default=[1000, 4000, 16000],
                        help="Japanese documents (ja-only mix) for the dedup stages' memory")
    parser.add_argument("--dedup-shards", type=int, default=4,
                        help="shards the dedup stages' documents are ingested in (a partition reads each of them)")
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 16],
                        help="dedup partition tasks (dedup_tasks) to run over each document count")
    args = parser.parse_args()

    with SeaweedS3(public_read_buckets=("commoncrawl",)) as server, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = max(args.shards) * args.files_per_shard
        _upload_crawl(server, CRAWL_ID, args.mix, files, args.records, tmp)
        print(f"### Shard tasks: {args.files_per_shard} files of {args.records} records ({args.mix}) per shard\n")
        print("| shards | crawl records | task | records | MB gz | CPU s | records/s | MB/s gz | peak RSS MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for shards in args.shards:
            for index in range(shards):
                plan = {"index": index, "first_file": index * args.files_per_shard,
                        "max_files": args.files_per_shard}
                r = _task(stage="shard", crawl=CRAWL_ID, endpoint=server.endpoint_url, plan=plan,
                          out=str(tmp / f"run{shards}" / f"shard-{index}"))
                print(f"| {shards} | {shards * args.files_per_shard * args.records:,} | {index} | {r['records']:,} "
                      f"| {r['bytes'] / 1e6:.2f} | {r['cpu_s']:.2f} | {r['records'] / r['cpu_s']:,.0f} "
                      f"| {r['bytes'] / 1e6 / r['cpu_s']:.2f} | {r['peak_mb']:.0f} |")

        print(f"\n### Dedup stages as separate tasks over {args.dedup_shards} shards\n")
        print("| documents | partition tasks | band rows read (max task) | candidate pairs | kept "
              "| partition peak RSS MB (max) | cluster MB | write MB | partition s (max) | cluster s | write s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for docs in args.dedup_docs:
            crawl = f"CC-MAIN-2099-{docs}-{args.dedup_shards}"
            _upload_crawl(server, crawl, "ja-only", args.dedup_shards, docs // args.dedup_shards, tmp)
            shard_dirs = []
            for index in range(args.dedup_shards):
                shard_dirs.append(str(tmp / crawl / f"shard-{index}"))
                _task(stage="shard", crawl=crawl, endpoint=server.endpoint_url, out=shard_dirs[-1],
                      plan={"index": index, "first_file": index, "max_files": 1})
            # Every partition count over the same shards: a cluster run sizes dedup_tasks to the documents, so
            # the figure to watch is the largest task's peak where documents / tasks stays the same.
            for count in args.partitions:
                folder = tmp / crawl / f"partitions-{count}"
                parts = [_task(stage="partition", crawl=crawl, endpoint=server.endpoint_url, shards=shard_dirs,
                               partitions=count, index=i, out=str(folder / f"partition-{i}")) for i in range(count)]
                cluster = _task(stage="cluster", crawl=crawl, endpoint=server.endpoint_url, out=str(folder / "drops"),
                                partitions=[str(folder / f"partition-{i}") for i in range(count)])
                write = _task(stage="write", crawl=crawl, endpoint=server.endpoint_url, shards=shard_dirs,
                              drops=str(folder / "drops"), out=str(folder / "out"))
                print(f"| {write['documents']:,} | {count} | {max(p['band_rows'] for p in parts):,} "
                      f"| {cluster['pairs']:,} | {write['kept']:,} | {max(p['peak_mb'] for p in parts):.0f} "
                      f"| {cluster['peak_mb']:.0f} | {write['peak_mb']:.0f} | {max(p['wall_s'] for p in parts):.2f} "
                      f"| {cluster['wall_s']:.2f} | {write['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
