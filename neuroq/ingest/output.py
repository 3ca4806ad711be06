"""Kept documents -> train/validation shards (JSONL, gzip JSONL or Parquet) with their file list and digest.

Layout of an output folder::

    manifest.json
    train/part-00000.jsonl.gz        {"id", "source", "url", "text", "meta"} per line
    validation/part-00000.jsonl.gz

A document's split depends on its text alone (``sha256(salt + text)``, the rule of
``neuroq.data.is_validation``), so adding sources never moves a document across the split, and exact copies
cannot sit on both sides. Files are written reproducibly (gzip header time 0), so the same input gives
byte-identical shards and the same file hashes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from neuroq.ingest.config import OutputConfig
from neuroq.ingest.document import Document

__all__ = ["SPLITS", "ShardedWriter", "is_validation", "iter_documents", "read_documents"]

SPLITS = ("train", "validation")
_PARQUET_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("url", pa.string()),
                             ("text", pa.string()), ("meta", pa.string())])  # meta as JSON: free-form per source
_PARQUET_ROW_GROUP = 1000


def is_validation(text: str, val_fraction: float, salt: str = "") -> bool:
    digest = hashlib.sha256(salt.encode("utf-8") + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Shard:
    """One open output file; JSONL is written line by line, Parquet a row group at a time."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.documents = 0
        self.characters = 0
        self._raw = path.open("wb")
        self._text: io.TextIOWrapper | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._rows: list[dict[str, Any]] = []
        if fmt == "parquet":
            self._parquet = pq.ParquetWriter(self._raw, _PARQUET_SCHEMA, compression="zstd")
        else:
            stream: BinaryIO = self._raw
            if fmt == "jsonl.gz":
                stream = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
            self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")

    def write(self, doc: Document) -> None:
        self.documents += 1
        self.characters += len(doc.text)
        if self._text is not None:
            self._text.write(json.dumps(doc.to_record(), ensure_ascii=False) + "\n")
            return
        record = doc.to_record()
        record["meta"] = json.dumps(record["meta"], ensure_ascii=False, sort_keys=True)
        self._rows.append(record)
        if len(self._rows) >= _PARQUET_ROW_GROUP:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._rows and self._parquet is not None:
            self._parquet.write_table(pa.Table.from_pylist(self._rows, schema=_PARQUET_SCHEMA))
            self._rows = []

    def close(self, root: Path) -> dict[str, Any]:
        if self._text is not None:
            self._text.close()
        else:
            self._flush_rows()
            assert self._parquet is not None
            self._parquet.close()
        self._raw.close()  # GzipFile and ParquetWriter leave a file object they were given open
        return {"path": self.path.relative_to(root).as_posix(), "documents": self.documents,
                "characters": self.characters, "bytes": self.path.stat().st_size, "sha256": _sha256_file(self.path)}


class ShardedWriter:
    """Writes documents into ``<root>/<split>/part-NNNNN.<ext>``, a new shard every ``max_documents_per_shard``."""

    def __init__(self, config: OutputConfig, root: Path) -> None:
        self.config = config
        self.root = Path(root)
        self._open: dict[str, _Shard] = {}
        self._closed: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        self._content = hashlib.sha256()

    def write(self, doc: Document) -> str:
        """Write ``doc`` to its split's current shard; returns the split."""
        split = "validation" if is_validation(doc.text, self.config.val_fraction, self.config.split_salt) else "train"
        shard = self._open.get(split)
        if shard is None:
            index = len(self._closed[split])
            directory = self.root / split
            directory.mkdir(parents=True, exist_ok=True)
            shard = self._open[split] = _Shard(directory / f"part-{index:05d}.{self.config.format}", self.config.format)
        shard.write(doc)
        # The digest covers texts in output order: any change of content, filtering or order changes it.
        self._content.update(hashlib.sha256(doc.text.encode("utf-8")).digest())
        if shard.documents >= self.config.max_documents_per_shard:
            self._closed[split].append(self._open.pop(split).close(self.root))
        return split

    def close(self) -> dict[str, Any]:
        """Close open shards; returns the manifest's ``splits`` and ``content_digest`` entries."""
        for split in list(self._open):
            self._closed[split].append(self._open.pop(split).close(self.root))
        splits = {split: {"documents": sum(f["documents"] for f in files),
                          "characters": sum(f["characters"] for f in files), "files": files}
                  for split, files in self._closed.items()}
        return {"splits": splits, "content_digest": f"sha256:{self._content.hexdigest()}"}


def iter_documents(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of one shard file (any of the three formats), ``meta`` as a dict, a row group or line at a time."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_ROW_GROUP):
            yield from ({**row, "meta": json.loads(row["meta"])} for row in batch.to_pylist())
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        yield from (json.loads(line) for line in handle if line.strip())


def read_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every record of one shard file: for checks and small sets."""
    return list(iter_documents(path))
