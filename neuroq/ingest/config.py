"""Typed configuration of the ingest: one dataclass per step, every knob in it.

The CLI, the KFP component and the MLproject entry point all build an ``IngestConfig`` (from flags or from the
JSON ``to_dict`` writes), and the manifest records ``to_dict()`` so an output folder says how it was made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from neuroq.errors import ConfigError
from neuroq.validation import is_int, is_number, require

__all__ = [
    "CommonCrawlConfig",
    "DedupConfig",
    "HFSourceConfig",
    "IngestConfig",
    "OutputConfig",
    "QualityConfig",
    "SourceConfig",
    "DEFAULT_BOILERPLATE_PATTERNS",
]


@dataclass(frozen=True)
class HFSourceConfig:
    """A Hugging Face dataset: a hub name, local text/json/parquet/csv files, or a ``save_to_disk`` folder.

    ``path`` is what ``datasets.load_dataset`` takes (``"range3/wiki40b-ja"``, or ``"json"`` with
    ``data_files``); a local file, a folder of data files or a ``save_to_disk`` folder also works as ``path``.
    """

    KIND: ClassVar[str] = "huggingface"

    path: str
    name: str | None = None  # hub configuration (subset), e.g. "ja"
    split: str = "train"
    data_files: tuple[str, ...] = ()
    revision: str | None = None
    text_column: str = "text"
    # str.format template over columns, e.g. "<USER>{instruction}<ASSISTANT>{response}"; replaces text_column.
    template: str | None = None
    id_column: str | None = None  # default ids are "<label>/<row index>"
    streaming: bool = False
    max_records: int | None = None  # rows read, empty ones included
    max_chars: int | None = None  # total characters yielded; the document that would exceed it is not yielded
    # How the "text" builder cuts .txt files into records (datasets' own default is "line").
    text_sample_by: Literal["line", "paragraph", "document"] = "line"
    clean_markup: bool = True  # strip wiki40b's _START_ARTICLE_/_NEWLINE_ markup where present
    cache_dir: str | None = None
    apply_quality_filters: bool = False  # curated sets skip the web-page filters by default
    label: str | None = None  # name in the manifest; default "hf:<path>[/<name>]:<split>"
    # Read only contiguous block ``shard_index`` of ``num_shards`` (``Dataset.shard``), for one task of the sharded
    # ingest; row numbers (ids, meta) stay those of the whole split, and max_records / max_chars apply per shard.
    num_shards: int = 1
    shard_index: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("HFSourceConfig.path is empty: give a hub dataset name, a builder name or a local path")
        files = (self.data_files,) if isinstance(self.data_files, str) else tuple(self.data_files)
        object.__setattr__(self, "data_files", files)  # lists become tuples: configs compare equal after JSON
        for name in ("max_records", "max_chars"):
            value = getattr(self, name)
            require(value is None or (is_int(value) and value > 0), f"HFSourceConfig.{name}",
                    "a positive integer or None", value)
        require(is_int(self.num_shards) and self.num_shards >= 1, "HFSourceConfig.num_shards", "a positive integer",
                self.num_shards)
        require(is_int(self.shard_index) and 0 <= self.shard_index < self.num_shards, "HFSourceConfig.shard_index",
                f"an integer in [0, num_shards={self.num_shards})", self.shard_index)
        if self.num_shards > 1 and self.streaming:
            # IterableDataset.shard splits by data files, whose row counts a task cannot know without reading
            # the earlier shards: its row numbers (the document ids) would not match one process's.
            raise ConfigError("HFSourceConfig.num_shards > 1 needs streaming=False: a streamed dataset's shards "
                              "cannot number their rows like one process does")
        require(self.text_sample_by in ("line", "paragraph", "document"), "HFSourceConfig.text_sample_by",
                "line, paragraph or document", self.text_sample_by)
        if self.template is not None and "{" not in self.template:
            raise ConfigError(f"HFSourceConfig.template {self.template!r} names no column: use {{column}} fields")

    @property
    def source_label(self) -> str:
        if self.label:
            return self.label
        name = f"/{self.name}" if self.name else ""
        return f"hf:{self.path}{name}:{self.split}"


@dataclass(frozen=True)
class CommonCrawlConfig:
    """WET files of one Common Crawl crawl, read from S3 (or any S3-compatible store) as a stream."""

    KIND: ClassVar[str] = "commoncrawl"

    crawl_id: str = "CC-MAIN-2024-10"
    bucket: str = "commoncrawl"
    endpoint_url: str | None = None  # None: AWS S3; set it to read a mirror or a test server
    region: str = "us-east-1"  # where the public bucket lives
    # Unsigned requests need no AWS account; anonymous=False signs with boto3's usual credential chain.
    anonymous: bool = True
    profile: str | None = None  # AWS profile for signed requests
    first_file: int = 0  # index into wet.paths.gz, to spread files over workers
    max_files: int | None = None
    max_records: int | None = 1000  # conversion records read (before filtering), over all files
    # Common Crawl tags each record with CLD2 languages ("jpn,eng"); e.g. "jpn" skips untagged-as-Japanese
    # records before decoding them, which saves most of the CPU on a real crawl (about 5% is Japanese).
    identified_language: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 5  # botocore retries per request
    apply_quality_filters: bool = True
    label: str | None = None  # default "cc:<crawl_id>"

    def __post_init__(self) -> None:
        if not self.crawl_id or "/" in self.crawl_id:
            raise ConfigError(f"CommonCrawlConfig.crawl_id must look like 'CC-MAIN-2024-10', got {self.crawl_id!r}")
        require(is_int(self.first_file) and self.first_file >= 0, "CommonCrawlConfig.first_file",
                "a non-negative integer", self.first_file)
        for name in ("max_files", "max_records"):
            value = getattr(self, name)
            require(value is None or (is_int(value) and value > 0), f"CommonCrawlConfig.{name}",
                    "a positive integer or None", value)
        require(is_int(self.max_attempts) and self.max_attempts > 0, "CommonCrawlConfig.max_attempts",
                "a positive integer", self.max_attempts)
        if self.anonymous and self.profile:
            raise ConfigError("CommonCrawlConfig.profile is set but anonymous=True: "
                              "set anonymous=False to sign requests")

    @property
    def source_label(self) -> str:
        return self.label or f"cc:{self.crawl_id}"

    @property
    def wet_paths_key(self) -> str:
        return f"crawl-data/{self.crawl_id}/wet.paths.gz"


SourceConfig = Union[HFSourceConfig, CommonCrawlConfig]


# Matched (case-insensitively) against short lines only, see QualityConfig.boilerplate_max_line_chars: a
# paragraph that discusses cookies is content, a 20-character "Cookieを有効にしてください" line is not. Cookie and
# JavaScript patterns need a banner verb, so a recipe line about クッキー or a tutorial line about JavaScript stays.
DEFAULT_BOILERPLATE_PATTERNS: tuple[str, ...] = (
    r"(cookie|クッキー).{0,20}(使用|利用|有効|同意|設定|ポリシー|policy|accept|consent|use)",
    r"javascript.{0,20}(有効|無効|オン|オフ|enable|disable|required|必要)",
    r"copyright", r"©", r"\(c\)\s*\d{4}", r"all rights reserved",
    r"privacy policy", r"terms of (use|service)", r"プライバシーポリシー", r"個人情報保護方針", r"利用規約",
    r"ナビゲーション", r"ログイン", r"ログアウト", r"会員登録", r"新規登録", r"パスワード(を)?(お)?忘れ",
    r"ページの(先頭|トップ)", r"ページトップ", r"トップページ", r"サイトマップ", r"お問い?合わせ", r"無断(転載|複製|転用)",
    r"^(ホーム|home|メニュー|menu|検索|search)$", r"シェア(する)?$", r"ツイート$", r"いいね", r"^(前|次)の(記事|ページ)",
    r"^関連(記事|リンク)$", r"^カテゴリー?$", r"^タグ$", r"^広告$", r"^PR$", r"^スポンサーリンク$",
)


@dataclass(frozen=True)
class QualityConfig:
    """Japanese detection and FineWeb-2-style quality filters (jpn_Jpan), measured on characters.

    FineWeb-2 computes its statistics on words from a Japanese word segmenter; none is installed here, so the
    repetition statistics use characters and lines. Each check that fails names the drop reason.
    """

    # Language: share of Japanese script (kana + kanji) among letters, then share of kana among CJK characters
    # (Chinese has no kana; everyday Japanese is 30-70% kana).
    min_japanese_ratio: float = 0.5
    min_kana_share: float = 0.2
    min_chars: int = 200
    max_chars: int = 100_000
    remove_boilerplate_lines: bool = True
    boilerplate_patterns: tuple[str, ...] = DEFAULT_BOILERPLATE_PATTERNS
    boilerplate_max_line_chars: int = 80
    max_boilerplate_line_fraction: float = 0.5  # a page that is mostly chrome is dropped, not trimmed
    max_duplicate_line_fraction: float = 0.375  # FineWeb-2 jpn_Jpan dup_line_frac
    max_duplicate_line_char_fraction: float = 0.2
    max_duplicate_paragraph_fraction: float = 0.3
    max_duplicate_paragraph_char_fraction: float = 0.2
    # (n, max fraction of characters covered by the most frequent character n-gram)
    max_top_ngram_char_fractions: tuple[tuple[int, float], ...] = ((2, 0.12), (3, 0.11), (4, 0.10))
    max_symbol_ratio: float = 0.1  # Unicode symbol characters (★, ■, →, ♪, #) per non-space character
    max_digit_ratio: float = 0.2
    max_ellipsis_line_fraction: float = 0.3  # lines ending in …, ... or ・・・
    min_terminal_punct_line_fraction: float = 0.167  # FineWeb-2 jpn_Jpan line_punct_thr

    def __post_init__(self) -> None:
        object.__setattr__(self, "boilerplate_patterns", tuple(self.boilerplate_patterns))
        object.__setattr__(self, "max_top_ngram_char_fractions",
                           tuple(tuple(entry) for entry in self.max_top_ngram_char_fractions))
        for name in ("min_japanese_ratio", "min_kana_share", "max_boilerplate_line_fraction",
                     "max_duplicate_line_fraction", "max_duplicate_line_char_fraction",
                     "max_duplicate_paragraph_fraction", "max_duplicate_paragraph_char_fraction",
                     "max_symbol_ratio", "max_digit_ratio", "max_ellipsis_line_fraction",
                     "min_terminal_punct_line_fraction"):
            value = getattr(self, name)
            require(is_number(value) and 0 <= value <= 1, f"QualityConfig.{name}", "a number in [0, 1]", value)
        require(is_int(self.min_chars) and self.min_chars >= 0, "QualityConfig.min_chars", "a non-negative integer",
                self.min_chars)
        for name in ("max_chars", "boilerplate_max_line_chars"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, f"QualityConfig.{name}", "a positive integer", value)
        if self.min_chars > self.max_chars:
            raise ConfigError(f"QualityConfig.min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        for entry in self.max_top_ngram_char_fractions:
            if (len(entry) != 2 or not isinstance(entry[0], int) or entry[0] < 1
                    or not isinstance(entry[1], (int, float)) or not 0 <= entry[1] <= 1):
                raise ConfigError("QualityConfig.max_top_ngram_char_fractions entries must be (n >= 1, fraction), "
                                  f"got {entry!r}")


@dataclass(frozen=True)
class DedupConfig:
    """Exact and near-duplicate removal across all sources; the first document seen is the one kept."""

    exact: bool = True  # sha256 of NFKC text with whitespace runs collapsed
    near: bool = True  # MinHash LSH over character n-grams (Japanese has no spaces to split words on)
    ngram_size: int = 5
    num_perm: int = 128
    threshold: float = 0.8  # estimated Jaccard similarity of n-gram sets at which a document is a near-duplicate
    seed: int = 1
    # LSH returns candidates that merely share a band; checking their estimated Jaccard removes the false ones.
    verify_candidates: bool = True

    def __post_init__(self) -> None:
        for name in ("ngram_size", "num_perm"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, f"DedupConfig.{name}", "a positive integer", value)
        require(is_number(self.threshold) and 0 < self.threshold <= 1, "DedupConfig.threshold",
                "a number in (0, 1] (0 would call every pair a duplicate)", self.threshold)


@dataclass(frozen=True)
class OutputConfig:
    """Where and how kept documents are written: train/validation shards plus manifest.json."""

    output_dir: str = "data/ingest"
    format: Literal["jsonl", "jsonl.gz", "parquet"] = "jsonl.gz"
    max_documents_per_shard: int = 100_000
    # Split by sha256(salt + text), the rule of neuroq.data.is_validation, so both agree on every document.
    val_fraction: float = 0.05
    split_salt: str = ""
    overwrite: bool = False  # replace a non-empty output_dir instead of refusing

    def __post_init__(self) -> None:
        require(self.format in ("jsonl", "jsonl.gz", "parquet"), "OutputConfig.format", "jsonl, jsonl.gz or parquet",
                self.format)
        require(is_int(self.max_documents_per_shard) and self.max_documents_per_shard > 0,
                "OutputConfig.max_documents_per_shard", "a positive integer", self.max_documents_per_shard)
        require(is_number(self.val_fraction) and 0 <= self.val_fraction < 1, "OutputConfig.val_fraction",
                "a number in [0, 1)", self.val_fraction)


@dataclass(frozen=True)
class IngestConfig:
    """The whole ingest: sources read in order, one quality/dedup/output setting shared by all of them."""

    sources: tuple[SourceConfig, ...] = ()
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        labels = [source.source_label for source in self.sources]
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            raise ConfigError(f"IngestConfig.sources share labels {duplicated}: give each source its own `label`")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``from_dict(to_dict())`` gives an equal config."""
        return {
            "sources": [{"kind": source.KIND, **_plain(dataclasses.asdict(source))} for source in self.sources],
            "quality": _plain(dataclasses.asdict(self.quality)),
            "dedup": _plain(dataclasses.asdict(self.dedup)),
            "output": _plain(dataclasses.asdict(self.output)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestConfig:
        """Build from ``to_dict()``'s shape; unknown keys are errors, so a typo never silently does nothing."""
        _reject_unknown(cls, data, "IngestConfig")
        kinds = {HFSourceConfig.KIND: HFSourceConfig, CommonCrawlConfig.KIND: CommonCrawlConfig}
        sources = []
        for index, raw in enumerate(data.get("sources", ())):
            raw = dict(raw)
            kind = raw.pop("kind", None)
            require(kind in kinds, f"IngestConfig.sources[{index}].kind", f"one of {sorted(kinds)}", kind)
            sources.append(_build(kinds[kind], raw, f"sources[{index}]"))
        parts = {name: _build(sub, data[name], name) for name, sub in
                 (("quality", QualityConfig), ("dedup", DedupConfig), ("output", OutputConfig)) if name in data}
        return cls(sources=tuple(sources), **parts)


_T = TypeVar("_T")


def _reject_unknown(cls: type, data: Mapping[str, Any], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}")


def _build(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    """``cls(**data)`` with unknown keys refused; the dataclasses turn JSON lists back into their tuples."""
    _reject_unknown(cls, data, where)
    try:
        return cls(**data)
    except TypeError as exc:  # e.g. a required field missing
        raise ConfigError(f"{where}: {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
