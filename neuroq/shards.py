"""Documents -> token shards on disk -> fixed-length training blocks.

    write_token_shards(train_docs, tokenizer, "shards/train")         # uint16 .bin files + manifest.json
    blocks = PackedBlocks("shards/train", block_size=256)             # memory-mapped (x, y) windows

Documents (from ``neuroq.data``) are stored as ``[bos] + ids + [eos]`` one after another, so a model learns where
texts start and end; PackedBlocks cuts that stream into windows without caring where documents or shard files
begin, which is what makes corpora larger than RAM work: only the windows being read are ever paged in.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from neuroq.data import PathInput, count_chars
from neuroq.errors import DataError
from neuroq.validation import is_int, require

if TYPE_CHECKING:
    from neuroq.tokenizer import NeuroQTokenizer

__all__ = ["MANIFEST_NAME", "PackedBlocks", "load_manifest", "write_token_shards"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_MANIFEST_FORMAT = "neuroq-token-shards"
# Documents are encoded in batches of about this many characters: large enough to keep SentencePiece's threads
# busy, small enough that one batch of ids (a few int lists per character) stays in the tens of megabytes.
_ENCODE_BATCH_CHARS = 2_000_000


def write_token_shards(docs: Iterable[str], tokenizer: NeuroQTokenizer, out_dir: PathInput,
                       shard_tokens: int = 2**24) -> dict[str, Any]:
    """Encode ``docs`` into ``out_dir`` as ``[bos] + ids + [eos]`` per document; return the manifest.

    Streams: documents are encoded in batches and written out shard by shard, so memory holds one shard
    (``shard_tokens`` ids, 32 MiB at the default) whatever the corpus size. Ids are uint16 (uint32 for
    vocabularies over 65,536). The result appears atomically: it is built in a temporary directory next to
    ``out_dir`` and renamed into place, so a crash never leaves a half-written shard set that looks complete.
    An existing ``out_dir`` is replaced only if it is empty or holds a previous shard set.

    The manifest (also written as ``manifest.json``) records n_tokens, n_docs, n_chars (raw characters, see
    ``count_chars``), dtype, vocab_size, the tokenizer's sha256 and the shard files with their token counts.
    """
    require(is_int(shard_tokens) and shard_tokens >= 1, "shard_tokens", "a positive integer", shard_tokens)
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        writer = _ShardWriter(tmp_dir, shard_tokens)
        n_docs = n_chars = 0
        with tqdm(desc=f"encoding {out_dir.name}", unit="doc", disable=None) as progress:
            for batch in _batches(docs):
                ids = tokenizer.encode_batch(batch, add_bos=True, add_eos=True)
                writer.write(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype,
                                         count=sum(len(x) for x in ids)))
                n_docs += len(batch)
                n_chars += count_chars(batch)
                progress.update(len(batch))
        shards = writer.close()
        manifest = {
            "format": _MANIFEST_FORMAT,
            "version": 1,
            "n_tokens": sum(s["n_tokens"] for s in shards),
            "n_docs": n_docs,
            "n_chars": n_chars,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_sha256": tokenizer.sha256,
            "shards": shards,
        }
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("wrote %d tokens from %d documents (%d chars) to %s in %d shard(s)", manifest["n_tokens"], n_docs,
             n_chars, out_dir, len(shards))
    return manifest


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        if not isinstance(doc, str):
            raise DataError(f"documents must be str, got {type(doc).__name__}")
        if not doc:
            continue
        batch.append(doc)
        size += len(doc)
        if size >= _ENCODE_BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _ShardWriter:
    """Appends ids to ``shard_00000.bin``, ``shard_00001.bin``, ..., starting a new file every ``shard_tokens``."""

    def __init__(self, directory: Path, shard_tokens: int) -> None:
        self._directory = directory
        self._shard_tokens = shard_tokens
        self._file: Any = None
        self._in_shard = 0
        self.shards: list[dict[str, Any]] = []

    def write(self, ids: np.ndarray) -> None:
        while ids.size:
            if self._file is None:
                name = f"shard_{len(self.shards):05d}.bin"
                self._file = open(self._directory / name, "wb")
                self.shards.append({"file": name, "n_tokens": 0})
            room = self._shard_tokens - self._in_shard
            take = ids[:room]
            self._file.write(take.tobytes())
            self._in_shard += take.size
            self.shards[-1]["n_tokens"] = self._in_shard
            ids = ids[take.size:]
            if self._in_shard == self._shard_tokens:
                self._finish_shard()

    def close(self) -> list[dict[str, Any]]:
        if self._file is not None:
            self._finish_shard()
        return self.shards

    def _finish_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._in_shard = 0


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise DataError(f"{out_dir} is not empty and holds no {MANIFEST_NAME}: refusing to replace it with token "
                        "shards; choose an empty or new directory")


def _replace_dir(new: Path, target: Path) -> None:
    _check_replaceable(target)
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_manifest(shard_dir: PathInput) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a shard directory written by ``write_token_shards``."""
    path = Path(shard_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{shard_dir} has no {MANIFEST_NAME}: not a token shard directory "
                        "(write one with neuroq.shards.write_token_shards)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        raise DataError(f"{path} is not a {_MANIFEST_FORMAT} manifest")
    return manifest


# ---- training blocks ------------------------------------------------------------------------------------------

class PackedBlocks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows over the token stream of a shard directory, as (x, y) int64 tensors.

    Item i is ``x = stream[i*T : i*T+T]`` and ``y = stream[i*T+1 : i*T+T+1]`` (T = block_size): windows tile the
    stream with stride T, so every token after the first is a target exactly once, and the final partial window
    is dropped (``n_target_tokens`` says how many are covered). Windows may cross document and shard boundaries.
    Shards are opened as read-only ``np.memmap`` on first use (and again in each DataLoader worker), so only the
    pages a window touches are read.
    """

    def __init__(self, shard_dir: PathInput, block_size: int) -> None:
        require(is_int(block_size) and block_size >= 1, "block_size", "a positive integer", block_size)
        self.shard_dir = Path(shard_dir)
        self.block_size = block_size
        self.manifest = load_manifest(self.shard_dir)
        self._dtype = np.dtype(self.manifest["dtype"])
        self._files = [(self.shard_dir / s["file"], int(s["n_tokens"])) for s in self.manifest["shards"]]
        for path, n in self._files:
            expected = n * self._dtype.itemsize
            actual = path.stat().st_size if path.is_file() else None
            if actual != expected:
                raise DataError(f"shard {path} should hold {n} tokens ({expected} bytes) but "
                                f"{'is missing' if actual is None else f'has {actual} bytes'}: rewrite the shards")
        self._starts = list(itertools.accumulate((n for _, n in self._files), initial=0))
        self.n_tokens = self._starts[-1]
        if self.n_tokens < block_size + 1:
            raise DataError(f"{self.shard_dir} holds {self.n_tokens} tokens, fewer than one block of "
                            f"{block_size} + 1: use a smaller block_size or more text")
        self._arrays: list[np.memmap] | None = None

    @property
    def shards(self) -> list[np.memmap]:
        if self._arrays is None:
            self._arrays = [np.memmap(path, dtype=self._dtype, mode="r", shape=(n,)) for path, n in self._files]
        return self._arrays

    @property
    def n_chars(self) -> int:
        """Raw characters of the documents in these shards (the bits-per-character denominator)."""
        return int(self.manifest["n_chars"])

    @property
    def n_target_tokens(self) -> int:
        """Tokens predicted when every window is used once: ``len(self) * block_size``."""
        return len(self) * self.block_size

    def __len__(self) -> int:
        return (self.n_tokens - 1) // self.block_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        start = (index % len(self)) * self.block_size
        window = self.tokens(start, start + self.block_size + 1)
        return torch.from_numpy(window[:-1].astype(np.int64)), torch.from_numpy(window[1:].astype(np.int64))

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """``stream[start:stop]`` of the concatenated shards, read through the memory maps."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.n_tokens})")
        if start == stop:
            return np.empty(0, dtype=self._dtype)
        pieces = []
        shard = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            offset = start - self._starts[shard]
            take = min(stop - start, self._files[shard][1] - offset)
            pieces.append(self.shards[shard][offset:offset + take])
            start += take
            shard += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __getstate__(self) -> dict[str, Any]:
        # A pickled np.memmap carries its whole contents; workers reopen the files instead.
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __repr__(self) -> str:
        return (f"PackedBlocks({str(self.shard_dir)!r}, block_size={self.block_size}, blocks={len(self)}, "
                f"tokens={self.n_tokens})")
