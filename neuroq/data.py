"""Corpus text: documents read from files, and their train / validation split.

    docs = read_texts(["corpus/"])                                  # .txt / .jsonl (+ .gz), lazily
    train_docs, val_docs = split_documents(docs, val_fraction=0.05)   # deterministic, by content hash

The documents then become token shards and training blocks in ``neuroq.shards``.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from neuroq.errors import DataError
from neuroq.validation import is_number, require

__all__ = ["SUPPORTED_SUFFIXES", "count_chars", "is_validation", "read_texts", "split_documents"]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")

PathInput = str | os.PathLike[str]


# ---- reading text ---------------------------------------------------------------------------------------------

def read_texts(paths_or_dir: PathInput | Sequence[PathInput], *,
               sample_by: Literal["paragraph", "document", "line"] = "paragraph",
               text_field: str = "text") -> Iterator[str]:
    """Yield the documents in files and directories (searched recursively, in sorted order).

    ``.jsonl``: one document per line, taken from ``text_field``. ``.txt``: split as ``sample_by`` says (the
    names follow Hugging Face ``datasets``' text loader): "paragraph" (default) makes each block separated by a
    blank line a document, so a file without blank lines (a novel, one paragraph per line) stays one document
    while a file of texts separated by blank lines yields one per text; "document" makes each file one document;
    "line" each line. Either format may be gzipped. Blank documents are skipped.

    Paths are checked now and raise ``DataError`` at once; files are read lazily, one line at a time (except
    "document", which holds one file), so arbitrarily large corpora stream through.
    """
    require(sample_by in ("paragraph", "document", "line"), "sample_by", "'paragraph', 'document' or 'line'", sample_by)
    files = _resolve_files(paths_or_dir)
    return _read_files(files, sample_by, text_field)


def _resolve_files(paths_or_dir: PathInput | Sequence[PathInput]) -> list[Path]:
    paths = [paths_or_dir] if isinstance(paths_or_dir, str | os.PathLike) else list(paths_or_dir)
    if not paths:
        raise DataError("no input paths given")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and _suffix(p) and not any(part.startswith(".")
                                                                      for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"directory {path} holds no {', '.join(SUPPORTED_SUFFIXES)} files")
            files += found
        elif path.is_file():
            if not _suffix(path):
                raise DataError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
            files.append(path)
        else:
            raise DataError(f"input path {path} does not exist")
    return files


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def _read_files(files: list[Path], sample_by: str, text_field: str) -> Iterator[str]:
    for path in files:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        try:
            # Text mode with universal newlines: CRLF files give the same documents as LF files.
            with opener(path, "rt", encoding="utf-8") as f:
                if ".jsonl" in path.name.lower():
                    yield from _jsonl_docs(f, path, text_field)
                else:
                    yield from _txt_docs(f, sample_by)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{path} is not a complete gzip file: {exc}") from None


def _jsonl_docs(lines: Iterable[str], path: Path, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise DataError(f"{path}:{lineno}: expected a JSON object with a {text_field!r} field")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string")
        if text.strip():
            yield text


def _txt_docs(lines: Iterable[str], sample_by: str) -> Iterator[str]:
    if sample_by == "document":
        text = "".join(lines)
        if text.strip():
            yield text
        return
    if sample_by == "line":
        yield from (line.rstrip("\n") for line in lines if line.strip())
        return
    block: list[str] = []
    for line in itertools.chain(lines, ["\n"]):
        if line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\n")
            block = []


def count_chars(docs: Iterable[str]) -> int:
    """Characters in ``docs`` as given (before any normalisation): the denominator of bits per character.

    Counting the raw text, not tokens or normalised text, is what makes bits/char comparable across tokenizers.
    """
    return sum(len(doc) for doc in docs)


# ---- train / validation split ---------------------------------------------------------------------------------

def _hash_fraction(text: str, salt: str) -> float:
    digest = hashlib.sha256(salt.encode("utf-8") + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation(text: str, val_fraction: float = 0.05, salt: str = "") -> bool:
    """Whether ``text`` belongs to the validation split, decided by its content alone.

    Usable on a stream (filter documents into two shard sets without holding the corpus). Identical texts always
    land on the same side, so exact duplicates cannot leak from training into validation.
    """
    _check_val_fraction(val_fraction)
    return _hash_fraction(text, salt) < val_fraction


def split_documents(docs: Iterable[str], val_fraction: float = 0.05, salt: str = "") -> tuple[list[str], list[str]]:
    """Split ``docs`` into (train, val) by ``sha256(salt + text)``; each keeps the input order.

    The same documents give the same split in any order and on any machine, and a document's side does not
    change when others are added. With ``val_fraction > 0`` and at least two distinct texts, both sides are
    non-empty: if hashing left one empty, the text nearest the threshold (with its duplicates) is moved over.
    ``val_fraction=0`` means no validation set.
    """
    _check_val_fraction(val_fraction)
    docs = list(docs)
    scores = [_hash_fraction(doc, salt) for doc in docs]
    in_val = [score < val_fraction for score in scores]
    if val_fraction > 0 and len(set(scores)) >= 2:
        if not any(in_val):
            in_val = [score == min(scores) for score in scores]
        elif all(in_val):
            in_val = [score != max(scores) for score in scores]
    train = [doc for doc, val in zip(docs, in_val) if not val]
    val = [doc for doc, val in zip(docs, in_val) if val]
    return train, val


def _check_val_fraction(val_fraction: float) -> None:
    require(is_number(val_fraction) and 0 <= val_fraction < 1, "val_fraction", "a number in [0, 1)", val_fraction)
