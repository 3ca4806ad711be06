"""Exact and near-duplicate removal across all sources, first document seen wins.

Exact: sha256 of the NFKC-normalised text with whitespace runs collapsed, so full-width/half-width variants and
re-wrapped copies of a page count as the same text. Near: MinHash LSH (datasketch) over character n-grams of
the text with all whitespace removed; Japanese has no spaces to split words on, and character 5-grams catch
pages that differ by a sentence or a date.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from neuroq.errors import ConfigError
from neuroq.ingest.config import DedupConfig

__all__ = ["Deduplicator", "MinHasher", "char_ngrams", "exact_key", "normalize_text"]

_WHITESPACE = re.compile(r"\s+")
_SCHEME = "affine32"  # datasketch's default since 2.0; named because reusing permutations requires it


def normalize_text(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def exact_key(text: str) -> bytes:
    return hashlib.sha256(normalize_text(text).encode("utf-8")).digest()


def char_ngrams(text: str, n: int) -> set[str]:
    """The set of character n-grams of ``text`` (NFKC, whitespace removed); a shorter text is its own n-gram."""
    chars = _WHITESPACE.sub("", unicodedata.normalize("NFKC", text))
    if len(chars) <= n:
        return {chars} if chars else set()
    return {chars[i:i + n] for i in range(len(chars) - n + 1)}


class MinHasher:
    """Signatures and LSH bands of one ``DedupConfig``: the MinHash code of the in-memory ``Deduplicator`` and of the
    sharded stages (``neuroq.ingest.sharded``), so both call the same documents near-duplicates.

    The band layout is datasketch's (``MinHashLSH`` picks the bands and rows that minimise false positives and
    negatives at ``threshold``); two documents are candidates when any band of their signatures is equal.
    """

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        try:
            self.lsh_parameters = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        except ValueError as exc:  # datasketch needs at least two bands: very high thresholds need more perms
            raise ConfigError(f"DedupConfig threshold={config.threshold} with num_perm={config.num_perm}: "
                              f"{exc}; raise num_perm or lower the threshold") from exc
        self.bands: list[tuple[int, int]] = list(self.lsh_parameters.hashranges)
        # Permutations are drawn from the seed once; drawing them per document cost as much as hashing it.
        self._permutations = MinHash(num_perm=config.num_perm, seed=config.seed).permutations

    def minhash(self, text: str) -> MinHash:
        # crc32 is one C call per n-gram, ten times faster than datasketch's default sha1; the base hash only
        # has to spread the n-grams, the seeded permutations provide the independence MinHash needs.
        minhash = MinHash(num_perm=self.config.num_perm, hashfunc=zlib.crc32, permutations=self._permutations,
                          scheme=_SCHEME)
        minhash.update_batch([gram.encode("utf-8") for gram in char_ngrams(text, self.config.ngram_size)])
        return minhash

    def signature(self, text: str) -> np.ndarray:
        """The MinHash values as uint32 (lossless: datasketch keeps them below 2**32)."""
        return self.minhash(text).hashvalues.astype(np.uint32)

    def band_keys(self, signature: np.ndarray) -> list[bytes]:
        return [signature[start:end].tobytes() for start, end in self.bands]

    def similar(self, signature: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Whether the estimated Jaccard similarity reaches the threshold, for each row of ``others``."""
        return np.mean(others == signature, axis=-1) >= self.config.threshold


class Deduplicator:
    """``check(text)`` returns ``"exact_duplicate"``, ``"near_duplicate"`` or ``None`` (then remembers the text).

    Memory per kept document: a 32-byte hash, the LSH band keys, and (with ``verify_candidates``) 4 bytes per
    permutation, about 0.7 KB in all with the defaults.
    """

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self.hasher = MinHasher(self.config)
        self._exact: set[bytes] = set()
        self._lsh = MinHashLSH(threshold=self.config.threshold, num_perm=self.config.num_perm)
        self._signatures: list[np.ndarray] = []  # by LSH key, only with verify_candidates
        self._inserted = 0

    def _is_near_duplicate(self, minhash: MinHash) -> bool:
        candidates = self._lsh.query(minhash)
        if not self.config.verify_candidates:
            return bool(candidates)
        signature = minhash.hashvalues.astype(np.uint32)
        return any(bool(self.hasher.similar(signature, self._signatures[index])) for index in candidates)

    def check(self, text: str) -> str | None:
        if self.config.exact:
            key = exact_key(text)
            if key in self._exact:
                return "exact_duplicate"
        if self.config.near:
            minhash = self.hasher.minhash(text)
            if self._is_near_duplicate(minhash):
                return "near_duplicate"
            self._lsh.insert(self._inserted, minhash, check_duplication=False)
            self._inserted += 1
            if self.config.verify_candidates:
                self._signatures.append(minhash.hashvalues.astype(np.uint32))
        if self.config.exact:
            self._exact.add(key)
        return None
