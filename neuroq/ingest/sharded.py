"""The ingest in shards, for a crawl too large for one process: the same kept documents as ``run_ingest``.

    plan_shards(source, n)           contiguous windows of the WET list (first_file / max_files), one per task
    ingest_shard(config, i, dir)     per shard: source -> quality -> exact keys, MinHash signatures (Parquet)
    plan_partitions(dedup, n)        the cross-shard dedup in n partitions: a range of exact-key prefixes and
                                     an equal share of the (LSH band x bucket hash) space each
    dedup_partition(config, dirs, p) per partition, over every shard: exact copies in its key range, verified
                                     candidate pairs in its band buckets (Parquet)
    cluster_duplicates(dirs, out)    every partition's pairs -> first-seen-wins -> the dropped documents
    write_deduplicated(config, ...)  the shards' documents minus the drops, shard by shard, like run_ingest
    dedup_shards(config, dirs)       the last three one after another in one process (same code)
    ingest_in_blocks(config, counts) run_ingest's answer for local datasets too large for its in-memory index:
                                     each in blocks through ingest_shard, then dedup_shards

A shard folder holds ``shard.json`` (its counts), ``docs.parquet`` (each text the first time the shard sees it,
in source order), ``keys.parquet`` (exact keys sorted, with how many copies the shard saw) and
``bands/band-NN.parquet`` (one file per LSH band: bucket, band key, document, signature, sorted by bucket, where
the bucket is a 32-bit hash of the band key). The layout follows datatrove's MinHash stages (signatures ->
buckets -> clusters -> filter). As in datatrove's bucket stage, a task takes a range of buckets within a band, so
``n`` partitions split the LSH work n ways however few bands there are: a task reads its bucket range of every
shard's band file as a k-way merge of sorted files (row groups outside the range skipped by their statistics),
so its memory is one row group and footer per shard, the largest group of equal band keys and one sorted run of
its pairs. The exact stage does the same per range of key prefixes. Only the cluster step sees the whole crawl:
it merges the runs in document order, holding a row group per run and one bit per document; the write step holds
one shard's drops at a time.

Why the answer equals one process's. Documents are numbered by (shard, position), which is the order
``run_ingest`` reads them in, since shards are contiguous windows. One process keeps a document unless an
earlier *kept* one has the same exact key (exact_duplicate) or shares an LSH band with it and passes the
similarity check (near_duplicate). Copies with one exact key have one n-gram set, so one signature: the first
copy decides for all of them (kept: the others are exact duplicates; near-dropped: they are near duplicates), and
the later ones can be left out of the near stages without changing anyone else's fate. Near-duplicate removal
is then the same greedy pass over the verified pairs sorted by the later document (``first_seen_wins``): not
union-find clusters, which would also drop C when A~B and B~C though A and C differ.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import os
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neuroq.errors import ConfigError
from neuroq.ingest.commoncrawl import list_wet_files
from neuroq.ingest.config import CommonCrawlConfig, DedupConfig, HFSourceConfig, IngestConfig
from neuroq.ingest.dedup import MinHasher, exact_key
from neuroq.ingest.document import Document
from neuroq.ingest.pipeline import IngestResult, SourceRun, publish, stage_counts, staged_folder, write_json
from neuroq.ingest.quality import QualityFilter

__all__ = ["BLOCK_DOCUMENTS", "DropSet", "ShardPlan", "cluster_duplicates", "dedup_partition", "dedup_shards",
           "first_seen_wins", "ingest_in_blocks", "ingest_shard", "plan_partitions", "plan_shards",
           "read_shard_manifest", "write_deduplicated"]

logger = logging.getLogger(__name__)

SHARD_MANIFEST = "shard.json"
SHARD_FORMAT = "neuroq-ingest-shard"
PARTITION_MANIFEST, PARTITION_FORMAT = "partition.json", "neuroq-dedup-partition"
CLUSTER_MANIFEST, CLUSTER_FORMAT = "cluster.json", "neuroq-dedup-cluster"
_POSITION_BITS = 40  # a document id is shard << 40 | position: 10^12 documents per shard, 2^23 shards
_POSITION_MASK = (1 << _POSITION_BITS) - 1
# Rows per Parquet row group. A stage reads a file one row group at a time, so this is what it holds of each shard:
# key rows are ~50 bytes; band rows carry a 512-byte signature (groups of 256: a partition over the whole bucket
# space held 0.56 MB per shard it reads, against 1.40 MB with 1,024) and text rows a page (the write holds ~1,000).
_KEY_ROWS = 8192
_BAND_ROWS = 256
_TEXT_ROWS = 1024
# Pairs per sorted run a partition writes: a 16 MB buffer of int64 pairs, ~3x that while np.unique sorts it.
_RUN_PAIRS = 1 << 20
# Documents per block of ``ingest_in_blocks``: an ingest shard holds ~0.6 KB of exact key and signature for each.
BLOCK_DOCUMENTS = 200_000
_KEY_PREFIX_SPACE = 1 << 16  # exact-key ranges are ranges of the keys' first two bytes
_BUCKET_SPACE = 1 << 32  # LSH bucket ranges are ranges of a band key's crc32


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    index: int
    first_file: int
    max_files: int

    def source(self, source: CommonCrawlConfig) -> CommonCrawlConfig:
        return dataclasses.replace(source, first_file=self.first_file, max_files=self.max_files,
                                   label=source.source_label)


def plan_shards(source: CommonCrawlConfig, num_shards: int, client: Any | None = None) -> list[ShardPlan]:
    """Split the source's window of the WET list into at most ``num_shards`` contiguous windows of near-equal size.

    With ``max_files`` set the plan needs no network; without it, ``wet.paths.gz`` is read to count the files.
    ``max_records`` then applies to each shard, not to the whole window.
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ConfigError(f"num_shards must be a positive integer, got {num_shards!r}")
    files = source.max_files if source.max_files is not None else len(list_wet_files(source, client))
    count = min(num_shards, files)
    plans, start = [], source.first_file
    for index in range(count):
        size = files // count + (index < files % count)
        plans.append(ShardPlan(index=index, first_file=start, max_files=size))
        start += size
    return plans


def _document_id(shard: int, position: int) -> int:
    return shard << _POSITION_BITS | position


def _write_table(path: Path, table: pa.Table, row_group_size: int = _KEY_ROWS, indexed: str | None = None) -> None:
    """Statistics only for ``indexed``, the column readers skip row groups by: a footer holds every row group's
    statistics, and a partition holds every shard's footer (min/max of 512-byte signatures made them 4x larger)."""
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd",
                   write_statistics=[indexed] if indexed else False)


def _bucket(band_key: bytes) -> int:
    """The LSH bucket of a band key: uniform over [0, 2**32), so equal ranges of it are equal shares of the work.
    Not the min-hash values themselves: a minimum crowds towards 0 (datatrove cuts its ranges at the quantiles of
    one signature file instead; a hash lets the plan be arithmetic, with no file to read)."""
    return zlib.crc32(band_key)


_DOCS_SCHEMA = pa.schema([("position", pa.int64()), ("id", pa.string()), ("source", pa.string()),
                          ("url", pa.string()), ("text", pa.string()), ("meta", pa.string())])


def ingest_shard(config: IngestConfig, index: int, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one shard (``config.sources`` is its one window) through the quality filters into ``out_dir``.

    Memory: the shard's exact keys and signatures (about 0.6 KB per document with the defaults), texts a row
    group at a time. ``out_dir`` is replaced whole, so a retried task never mixes two attempts.
    """
    if len(config.sources) != 1:
        raise ConfigError(f"ingest_shard reads one source, got {len(config.sources)}: plan one shard per task")
    started = time.perf_counter()
    with staged_folder(Path(out_dir)) as staging:
        manifest = _write_shard(config, index, staging)
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        write_json(staging / SHARD_MANIFEST, manifest)
    logger.info("shard %d: %d documents after quality, %d distinct, %.1fs", index, manifest["dedup_in"],
                manifest["distinct"], manifest["seconds"])
    return manifest


def _write_shard(config: IngestConfig, index: int, root: Path) -> dict[str, Any]:
    dedup = config.dedup
    hasher = MinHasher(dedup) if dedup.near else None
    run = SourceRun(config.sources[0], QualityFilter(config.quality))
    first_position: dict[bytes, int] = {}
    copies: Counter[int] = Counter()
    positions: list[int] = []
    signatures: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    dedup_in = 0
    with pq.ParquetWriter(root / "docs.parquet", _DOCS_SCHEMA, compression="zstd", write_statistics=False) as docs:
        for position, doc in enumerate(run):
            dedup_in += 1
            if dedup.exact:
                key = exact_key(doc.text)
                if key in first_position:
                    copies[first_position[key]] += 1
                    continue
                first_position[key] = position
            if hasher is not None:
                positions.append(position)
                signatures.append(hasher.signature(doc.text))
            rows.append({"position": position, **doc.to_record(),
                         "meta": json.dumps(doc.meta, ensure_ascii=False)})
            if len(rows) >= _TEXT_ROWS:
                docs.write_table(pa.Table.from_pylist(rows, schema=_DOCS_SCHEMA))
                rows = []
        docs.write_table(pa.Table.from_pylist(rows, schema=_DOCS_SCHEMA))
    if dedup.exact:
        keys = sorted(first_position.items())
        _write_table(root / "keys.parquet", pa.table({
            "prefix": pa.array([int.from_bytes(key[:2], "big") for key, _ in keys], pa.int32()),
            "key": pa.array([key for key, _ in keys], pa.binary(32)),
            "document": pa.array([_document_id(index, pos) for _, pos in keys], pa.int64()),
            "copies": pa.array([1 + copies[pos] for _, pos in keys], pa.int32()),
        }), indexed="prefix")
    if hasher is not None:
        (root / "bands").mkdir()
        ids = np.array([_document_id(index, pos) for pos in positions], dtype=np.int64)
        matrix = np.stack(signatures) if signatures else np.zeros((0, dedup.num_perm), dtype=np.uint32)
        signature_column = pa.array([row.tobytes() for row in matrix], pa.binary(4 * dedup.num_perm))
        for band, (start, end) in enumerate(hasher.bands):
            band_keys = [row[start:end].tobytes() for row in matrix]
            table = pa.table({"bucket": pa.array([_bucket(key) for key in band_keys], pa.int64()),
                              "band_key": pa.array(band_keys, pa.binary()), "document": ids,
                              "signature": signature_column})
            _write_table(root / "bands" / f"band-{band:02d}.parquet", table.sort_by(
                [("bucket", "ascending"), ("band_key", "ascending"), ("document", "ascending")]), _BAND_ROWS,
                indexed="bucket")
    report = run.report(dedup_in, dedup_in - sum(copies.values()), Counter())
    return {"format": SHARD_FORMAT, "index": index, "source": report, "dedup_in": dedup_in,
            "distinct": dedup_in - sum(copies.values()), "dedup": dataclasses.asdict(dedup)}


def read_shard_manifest(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return _read_json(Path(shard_dir) / SHARD_MANIFEST, SHARD_FORMAT, "ingest_shard")


def _read_json(path: Path, expected: str, writer: str) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a {expected} manifest ({exc}): pass folders written by {writer}") from exc
    if manifest.get("format") != expected:
        raise ConfigError(f"{path} is not a {expected} manifest: its format is {manifest.get('format')!r}")
    return manifest


def _rows(path: Path, columns: list[str], where: tuple[str, int, int] | None = None) -> Iterator[tuple[Any, ...]]:
    """Rows of a Parquet file as tuples, one row group in memory at a time; with ``where`` (column, low, high)
    only those with low <= column < high, the row groups outside the range skipped by their statistics.

    A plain reader of the chosen row groups, one thread, no read-ahead: a merge opens one per shard. pyarrow's
    dataset scanner, which does the same filtering, held more (a partition task of a 16k-document crawl peaked
    13 MB higher through it, and higher still on larger files).
    """
    parquet = pq.ParquetFile(path)
    groups = list(range(parquet.num_row_groups))
    read = columns
    if where is not None:
        name, low, high = where
        leaf = parquet.schema_arrow.get_field_index(name)
        groups = [group for group in groups if _may_hold(parquet.metadata.row_group(group).column(leaf), low, high)]
        read = list(dict.fromkeys([*columns, name]))
    for group in groups:
        batch = parquet.read_row_group(group, columns=read, use_threads=False)
        if where is not None:
            batch = batch.filter(pc.and_(pc.greater_equal(batch.column(name), low), pc.less(batch.column(name), high)))
        yield from zip(*(batch.column(column).to_pylist() for column in columns), strict=True)


def _may_hold(chunk: pq.ColumnChunkMetaData, low: int, high: int) -> bool:
    statistics = chunk.statistics
    if statistics is None or not statistics.has_min_max:
        return True
    return statistics.max >= low and statistics.min < high


def exact_copies(shard_dirs: Sequence[Path], prefix_range: tuple[int, int], runs: _SortedRuns) -> int:
    """(document, first copy) into ``runs`` for each distinct text of a shard whose exact key an earlier shard had
    first; returns the number of key rows read.

    One task per range of key prefixes: every shard's sorted keys in the range are merged, so memory is a row group
    per shard.
    """
    where = ("prefix", *prefix_range)
    merged = heapq.merge(*(_rows(Path(d) / "keys.parquet", ["key", "document"], where) for d in shard_dirs))
    rows = 0
    for _, group in itertools.groupby(merged, key=lambda row: row[0]):
        first, *later = [document for _, document in group]
        rows += 1 + len(later)
        if later:
            runs.add(np.column_stack([later, np.full(len(later), first)]))
    return rows


def bucket_pairs(shard_dirs: Sequence[Path], cell: tuple[int, int, int], hasher: MinHasher,
                 runs: _SortedRuns) -> int:
    """(later, earlier) document pairs into ``runs`` that share a band key in ``cell`` (band, first bucket, end
    bucket) and pass the similarity check; returns the number of band rows read.

    Each shard's band file is sorted by bucket, then band key: equal keys (one bucket) meet in a k-way merge of
    the cell's rows, and only one group of them is held at a time.
    """
    band, low, high = cell
    name = f"band-{band:02d}.parquet"
    columns = ["bucket", "band_key", "document", "signature"]
    merged = heapq.merge(*(_rows(Path(d) / "bands" / name, columns, ("bucket", low, high)) for d in shard_dirs))
    rows = 0
    for _, group in itertools.groupby(merged, key=lambda row: row[1]):
        members = list(group)
        rows += len(members)
        if len(members) < 2:
            continue
        ids = np.array([document for _, _, document, _ in members], dtype=np.int64)
        verify = hasher.config.verify_candidates
        signatures = np.stack([np.frombuffer(signature, dtype=np.uint32) for *_, signature in members]) \
            if verify else None
        # Member by member: a group of k near copies (boilerplate) has up to k^2 / 2 pairs, more than a run holds.
        for i in range(1, len(ids)):
            earlier = ids[:i][hasher.similar(signatures[i], signatures[:i])] if verify else ids[:i]
            if len(earlier):
                runs.add(np.column_stack([np.full(len(earlier), ids[i]), earlier]))
    return rows


class _SortedRuns:
    """Document pairs written as Parquet files ``<name>-NNNNN.parquet``, each sorted by (document, other) without
    repeats and at most ``_RUN_PAIRS`` long: the first half of an external sort, whose merge the cluster step
    does (``_merged_pairs``). A partition then holds one run of pairs, however many its buckets yield; a pair found
    in several bands of one run is written once (across runs, the merge meets the repeats next to each other)."""

    def __init__(self, folder: Path, name: str) -> None:
        self._folder, self._name = folder, name
        # One buffer, not a list of the arrays added: most groups give one pair, and an array costs ~100 bytes.
        self._buffer = np.empty((_RUN_PAIRS, 2), dtype=np.int64)
        self._size = self.files = self.pairs = 0

    def add(self, pairs: np.ndarray) -> None:
        while len(pairs):
            take = min(len(pairs), _RUN_PAIRS - self._size)
            self._buffer[self._size:self._size + take] = pairs[:take]
            self._size += take
            pairs = pairs[take:]
            if self._size == _RUN_PAIRS:
                self.flush()

    def flush(self) -> None:
        if not self._size:
            return
        run = np.unique(self._buffer[:self._size], axis=0)  # sorted by document, then other
        _write_table(self._folder / f"{self._name}-{self.files:05d}.parquet", _pairs_table(run))
        self._size = 0
        self.files += 1
        self.pairs += len(run)


def _merged_pairs(folders: Sequence[Path], name: str) -> Iterator[tuple[int, int]]:
    """Every partition's runs of ``name`` pairs as one stream sorted by document: a row group per run in memory."""
    runs = sorted(path for folder in folders for path in folder.glob(f"{name}-*.parquet"))
    return heapq.merge(*(_rows(path, ["document", "other"]) for path in runs))


class DropSet:
    """A set of document ids stored as one bit per position of each shard, grown as positions arrive.

    The near-dropped documents are the only state of the cluster step that grows with the crawl: ~1 bit per
    document (~20 MB for 150 M documents), where a Python set of ints costs ~70 bytes a member."""

    def __init__(self) -> None:
        self._bits: dict[int, bytearray] = {}
        self._count = 0

    def add(self, document: int) -> None:
        bits = self._bits.setdefault(document >> _POSITION_BITS, bytearray())
        byte = (document & _POSITION_MASK) >> 3
        if byte >= len(bits):
            bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))  # doubling: amortised O(1) per document
        if not bits[byte] >> (document & 7) & 1:
            bits[byte] |= 1 << (document & 7)
            self._count += 1

    def __contains__(self, document: object) -> bool:
        if not isinstance(document, int | np.integer):
            return False
        document = int(document)
        bits = self._bits.get(document >> _POSITION_BITS)
        byte = (document & _POSITION_MASK) >> 3
        return bits is not None and byte < len(bits) and bool(bits[byte] >> (document & 7) & 1)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        """The members in ascending order."""
        for shard in sorted(self._bits):
            positions = np.flatnonzero(np.unpackbits(np.frombuffer(self._bits[shard], np.uint8), bitorder="little"))
            yield from (_document_id(shard, int(position)) for position in positions)


def first_seen_wins(pairs: Iterable[tuple[int, int]]) -> DropSet:
    """The documents a single pass in document order drops: those with an earlier neighbour that was kept.

    ``pairs`` are (later, earlier), sorted by the later document (repeats allowed): a document's fate is then known
    before any later one asks for it, and the pairs can stream past. Memory: one bit per document (``DropSet``).
    """
    dropped = DropSet()
    for later, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
        if any(earlier not in dropped for _, earlier in group):
            dropped.add(later)
    return dropped


def _drops(near: DropSet, copies: Iterator[tuple[int, int]]) -> Iterator[tuple[int, str]]:
    """(document, reason) in document order: the near-dropped, and each copy of a text an earlier shard had first,
    which goes the way its first copy went."""
    marked = heapq.merge(((document, -1) for document in near), copies)
    for document, group in itertools.groupby(marked, key=lambda row: row[0]):
        firsts = [first for _, first in group if first >= 0]
        yield document, ("near_duplicate" if not firsts or firsts[0] in near else "exact_duplicate")


def _equal_ranges(space: int, parts: int) -> list[tuple[int, int]]:
    bounds = [space * index // parts for index in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def plan_partitions(dedup: DedupConfig, num_partitions: int) -> list[dict[str, Any]]:
    """The cross-shard dedup split into ``num_partitions`` tasks, each reading about 1/num_partitions of every
    shard: one range of exact-key prefixes (``key_range``), and one stretch of the LSH work laid end to end,
    band after band, each band its whole bucket space (``buckets``: [band, first bucket, end bucket] cells).
    With 9 bands and 12 tasks, task 0 takes band 0's first three quarters, task 1 its last quarter and band 1's
    first half, and so on."""
    if not isinstance(num_partitions, int) or not 1 <= num_partitions <= _KEY_PREFIX_SPACE:
        raise ConfigError(f"dedup partitions must be an integer in [1, {_KEY_PREFIX_SPACE}], got {num_partitions!r}")
    keys = _equal_ranges(_KEY_PREFIX_SPACE, num_partitions) if dedup.exact else None
    bands = len(MinHasher(dedup).bands) if dedup.near else 0
    plans = []
    for index, (start, end) in enumerate(_equal_ranges(bands * _BUCKET_SPACE, num_partitions)):
        cells = [[band, max(start - band * _BUCKET_SPACE, 0), min(end - band * _BUCKET_SPACE, _BUCKET_SPACE)]
                 for band in range(start // _BUCKET_SPACE, -(-end // _BUCKET_SPACE))]
        plans.append({"index": index, "key_range": list(keys[index]) if keys else [],
                      "buckets": [cell for cell in cells if cell[1] < cell[2]]})
    return plans


_PAIRS_SCHEMA = pa.schema([("document", pa.int64()), ("other", pa.int64())])


def _pairs_table(pairs: np.ndarray) -> pa.Table:
    return pa.table({"document": pairs[:, 0], "other": pairs[:, 1]}, schema=_PAIRS_SCHEMA)


def dedup_partition(config: IngestConfig, shard_dirs: Sequence[str | os.PathLike[str]], partition: dict[str, Any],
                    out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One partition of ``plan_partitions`` over every shard: ``copies-*.parquet`` (document, first copy) of its
    key range and ``pairs-*.parquet`` (later, earlier) verified in its band buckets, each a set of sorted runs.
    Memory: one row group per shard, the largest group of equal keys, and one run of pairs. The report counts the
    rows it read (``key_rows``, ``band_rows``): its share of the crawl."""
    dirs = _shard_dirs(config, shard_dirs)
    started = time.perf_counter()
    hasher = MinHasher(config.dedup)
    with staged_folder(Path(out_dir)) as staging:
        copies, pairs = _SortedRuns(staging, "copies"), _SortedRuns(staging, "pairs")
        key_rows = exact_copies(dirs, tuple(partition["key_range"]), copies) if partition["key_range"] else 0
        band_rows = sum(bucket_pairs(dirs, tuple(cell), hasher, pairs) for cell in partition["buckets"])
        copies.flush()
        pairs.flush()
        report = {"format": PARTITION_FORMAT, **partition, "exact_copies": copies.pairs,
                  "candidate_pairs": pairs.pairs, "runs": copies.files + pairs.files, "key_rows": key_rows,
                  "band_rows": band_rows, "seconds": round(time.perf_counter() - started, 3)}
        write_json(staging / PARTITION_MANIFEST, report)
    return report


def cluster_duplicates(partition_dirs: Sequence[str | os.PathLike[str]],
                       out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Every partition's pairs and copies -> ``drops.parquet`` (document, reason), sorted by document.

    First seen wins over the pairs merged in document order (``first_seen_wins``), then each copy follows its
    first copy. Memory: a row group per run read and one bit per document (``DropSet``), not the pairs.
    """
    reports = [_read_json(Path(d) / PARTITION_MANIFEST, PARTITION_FORMAT, "dedup_partition") for d in partition_dirs]
    started = time.perf_counter()
    folders = [Path(d) for d in partition_dirs]
    for report, folder in zip(reports, folders, strict=True):
        # A missing run would silently keep its duplicates: the count must match what the partition wrote.
        found = len([*folder.glob("pairs-*.parquet"), *folder.glob("copies-*.parquet")])
        if report.get("runs") != found:
            raise ConfigError(f"{folder} holds {found} sorted runs of pairs, its {PARTITION_MANIFEST} says "
                              f"{report.get('runs')}: run dedup_partition for it again")
    counts: Counter[str] = Counter()

    def counted(name: str) -> Iterator[tuple[int, int]]:
        """The merged pairs, counting distinct ones: a pair found in the bands of several partitions comes once
        from each, next to each other."""
        previous = None
        for pair in _merged_pairs(folders, name):
            counts[name] += pair != previous
            previous = pair
            yield pair

    near = first_seen_wins(counted("pairs"))
    schema = pa.schema([("document", pa.int64()), ("reason", pa.string())])
    with staged_folder(Path(out_dir)) as staging:
        with pq.ParquetWriter(staging / "drops.parquet", schema, compression="zstd",
                              write_statistics=["document"]) as writer:
            drops = _drops(near, counted("copies"))
            while chunk := list(itertools.islice(drops, _KEY_ROWS)):
                documents, reasons = zip(*chunk, strict=True)
                writer.write_table(pa.table({"document": documents, "reason": reasons}, schema=schema))
                counts["drops"] += len(chunk)
        report = {"format": CLUSTER_FORMAT, "partitions": len(reports),
                  "exact_copies_across_shards": counts["copies"], "candidate_pairs": counts["pairs"],
                  "drops": counts["drops"],
                  "seconds": round(time.perf_counter() - started + sum(r["seconds"] for r in reports), 3)}
        write_json(staging / CLUSTER_MANIFEST, report)
    logger.info("dedup across shards: %d exact copies, %d candidate pairs, %d drops", counts["copies"],
                counts["pairs"], counts["drops"])
    return report


def write_deduplicated(config: IngestConfig, shard_dirs: Sequence[str | os.PathLike[str]],
                       cluster_dir: str | os.PathLike[str]) -> IngestResult:
    """The shards' documents minus ``cluster_duplicates``' drops into ``config.output``, like ``run_ingest``
    (train/validation shards, manifest with per-shard counts). Memory: one shard's drops and exact-copy counts
    and one row group of its texts at a time, the output a row group at a time: nothing that grows with the crawl."""
    dirs = _shard_dirs(config, shard_dirs)
    manifests = [read_shard_manifest(d) for d in dirs]
    stages = _read_json(Path(cluster_dir) / CLUSTER_MANIFEST, CLUSTER_FORMAT, "cluster_duplicates")
    drops = Path(cluster_dir) / "drops.parquet"
    stages = {"shards": len(dirs), **{key: stages[key] for key in
                                      ("exact_copies_across_shards", "candidate_pairs", "seconds")}}

    def write(writer: Any) -> list[dict[str, Any]]:
        entries = []
        for manifest, folder in zip(manifests, dirs, strict=True):
            low, high = _document_id(manifest["index"], 0), _document_id(manifest["index"] + 1, 0)
            table = pq.read_table(drops, filters=[("document", ">=", low), ("document", "<", high)])
            reasons = dict(zip(table.column("document").to_pylist(), table.column("reason").to_pylist(), strict=True))
            entries.append(_write_kept(manifest, folder, reasons, writer))
        # One entry per source, in shard order: shards of one source are contiguous in the plan.
        labels = list(dict.fromkeys(manifest["source"]["label"] for manifest in manifests))
        return [{**_merge_reports([m["source"] for m in manifests if m["source"]["label"] == label],
                                  [e for e, m in zip(entries, manifests, strict=True) if m["source"]["label"] == label]),
                 "dedup_stages": stages} for label in labels]

    return publish(config, write)


def dedup_shards(config: IngestConfig, shard_dirs: Sequence[str | os.PathLike[str]],
                 partitions: int = 16) -> IngestResult:
    """Deduplicate shards written by ``ingest_shard`` across each other and write ``config.output`` like
    ``run_ingest``: the stages an executor runs as separate tasks (``dedup_partition`` per partition,
    ``cluster_duplicates``, ``write_deduplicated``), here one after another in one process.
    """
    dirs = _shard_dirs(config, shard_dirs)
    with _scratch_beside_output(config, "stages") as scratch:
        folders = []
        for partition in plan_partitions(config.dedup, partitions):
            folders.append(Path(scratch) / f"partition-{partition['index']}")
            dedup_partition(config, dirs, partition, folders[-1])
        cluster_duplicates(folders, Path(scratch) / "cluster")
        return write_deduplicated(config, dirs, Path(scratch) / "cluster")


def ingest_in_blocks(config: IngestConfig, documents: Sequence[int],
                     block_documents: int | None = None) -> IngestResult:
    """``run_ingest`` over Hugging Face sources of known sizes in bounded memory, in one process: source ``i``
    (``documents[i]`` rows) in contiguous blocks of at most ``block_documents`` rows (``Dataset.shard``), each
    block an ``ingest_shard``, then ``dedup_shards``. Memory follows a block (~0.6 KB of exact key and signature
    a document: ~120 MB at the default ``BLOCK_DOCUMENTS``), not the sum of the sources, and the answer is
    ``run_ingest``'s (tested). A wrong count changes only the number of blocks: each block's rows come from the
    dataset itself.
    """
    block_documents = BLOCK_DOCUMENTS if block_documents is None else block_documents
    if not isinstance(block_documents, int) or block_documents < 1:
        raise ConfigError(f"block_documents must be a positive integer, got {block_documents!r}")
    if len(documents) != len(config.sources):
        raise ConfigError(f"documents has {len(documents)} counts for {len(config.sources)} sources: one per source")
    for source in config.sources:
        if not isinstance(source, HFSourceConfig) or source.num_shards != 1:
            raise ConfigError(f"ingest_in_blocks reads whole Hugging Face datasets, got {source!r}")
    with _scratch_beside_output(config, "blocks") as scratch:
        shard_dirs: list[Path] = []
        for source, count in zip(config.sources, documents, strict=True):
            blocks = max(1, -(-count // block_documents))
            for block in range(blocks):
                shard_dirs.append(Path(scratch) / f"shard-{len(shard_dirs)}")
                one = dataclasses.replace(source, num_shards=blocks, shard_index=block)
                ingest_shard(dataclasses.replace(config, sources=(one,)), len(shard_dirs) - 1, shard_dirs[-1])
        return dedup_shards(config, shard_dirs)


def _scratch_beside_output(config: IngestConfig, label: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch folder on the output's volume: the intermediate files are the size of the data, and a task's /tmp
    is often small."""
    out = Path(config.output.output_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{out.name}.{label}-", dir=out.parent)


def _shard_dirs(config: IngestConfig, shard_dirs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The shard folders in shard order, checked to have been written with ``config.dedup``."""
    if not shard_dirs:
        raise ConfigError("no shard folders: run ingest_shard for each planned shard first")
    shards = sorted(((read_shard_manifest(d), Path(d)) for d in shard_dirs), key=lambda item: item[0]["index"])
    for manifest, folder in shards:
        if manifest["dedup"] != dataclasses.asdict(config.dedup):
            raise ConfigError(f"shard {folder} was written with dedup settings {manifest['dedup']}, not "
                              f"{dataclasses.asdict(config.dedup)}: ingest the shards again with this DedupConfig")
    return [folder for _, folder in shards]


def _write_kept(manifest: dict[str, Any], folder: Path, reasons: dict[int, str], writer: Any) -> dict[str, Any]:
    """Write one shard's kept documents in order; its counts, drops by reason included."""
    index = manifest["index"]
    extra_copies: dict[int, int] = {}
    if (folder / "keys.parquet").exists():
        keys = pq.read_table(folder / "keys.parquet", columns=["document", "copies"],
                             filters=[("copies", ">", 1)]).to_pydict()
        extra_copies = {doc: n - 1 for doc, n in zip(keys["document"], keys["copies"], strict=True)}
    dropped: Counter[str] = Counter()
    kept = 0
    for position, doc_id, source, url, text, meta in _rows(folder / "docs.parquet", _DOCS_SCHEMA.names):
        document = _document_id(index, position)
        reason = reasons.get(document)
        if extra_copies.get(document):
            # The shard's later copies of this text share its fate: kept or exact copy -> exact, else near.
            dropped["near_duplicate" if reason == "near_duplicate" else "exact_duplicate"] += extra_copies[document]
        if reason:
            dropped[reason] += 1
            continue
        writer.write(Document(text=text, source=source, id=doc_id, url=url, meta=json.loads(meta)))
        kept += 1
    source = manifest["source"]
    seconds = manifest["seconds"]
    return {"index": index, "wet_files": source["events"].get("wet_files_opened", 0),
            "records_read": source["stages"]["source"]["in"], "dedup_in": manifest["dedup_in"],
            "documents_out": kept, "dedup_dropped": dict(sorted(dropped.items())),
            "quality_dropped": source["stages"]["quality"]["dropped"],
            "wet_bytes_read": source["events"].get("wet_bytes_read", 0), "seconds": seconds,
            "records_per_s": round(source["stages"]["source"]["in"] / seconds, 1) if seconds else None,
            "failed_files": source["failed_files"]}


def _merge_reports(reports: list[dict[str, Any]], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One source entry for the whole window, shaped like ``run_ingest``'s, with the shards under ``shards``."""

    def total(stage: str, extra: str | None = None) -> dict[str, Any]:
        dropped: Counter[str] = Counter()
        for report in reports:
            dropped.update(report["stages"][stage]["dropped"])
        counts = stage_counts(sum(r["stages"][stage]["in"] for r in reports),
                              sum(r["stages"][stage]["out"] for r in reports), dropped)
        if extra:
            counts[extra] = sum(r["stages"][stage][extra] for r in reports)
        return counts

    dedup_dropped: Counter[str] = Counter()
    for shard in shards:
        dedup_dropped.update(shard["dedup_dropped"])
    events: Counter[str] = Counter()
    for report in reports:
        events.update(report["events"])
    kept = sum(shard["documents_out"] for shard in shards)
    first = reports[0]
    return {
        "label": first["label"], "kind": first["kind"], "uri": first["uri"], "documents_out": kept,
        "stages": {"source": total("source"), "quality": total("quality", "boilerplate_lines_removed"),
                   "dedup": stage_counts(sum(shard["dedup_in"] for shard in shards), kept, dedup_dropped)},
        "events": dict(sorted(events.items())),
        "failed_files": [failed for report in reports for failed in report["failed_files"]],
        "shards": shards,
    }
