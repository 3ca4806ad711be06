"""Hugging Face datasets as a document source: hub names, local data files, and ``save_to_disk`` folders.

Rows are read in batches with ``Dataset.iter`` / ``IterableDataset.iter`` and cut with a counter, never by
slicing (``ds[:n]`` returns a dict of columns, not rows: the old loader iterated over its keys and trained on
column names).
"""

from __future__ import annotations

import itertools
import logging
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetNotFoundError
from tqdm import tqdm

from neuroq.errors import ConfigError
from neuroq.ingest.config import HFSourceConfig
from neuroq.ingest.document import Document, SourceStats
from neuroq.ingest.errors import IngestError, SourceUnavailableError

__all__ = ["clean_wiki40b", "iter_huggingface", "load_hf_dataset", "template_columns"]

logger = logging.getLogger(__name__)

_BUILDERS_BY_SUFFIX = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".txt": "text", ".text": "text",
    ".parquet": "parquet",
    ".csv": "csv",
}
_PACKAGED_BUILDERS = {"json", "text", "parquet", "csv", "arrow"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}
_WIKI40B_MARKERS = re.compile(r"\s*_START_(?:ARTICLE|SECTION|PARAGRAPH)_\s*")


def clean_wiki40b(text: str) -> str:
    """wiki40b's dump markup to plain paragraphs: titles and headings become paragraphs of their own.

    ``"_START_ARTICLE_\\n東京\\n_START_PARAGRAPH_\\n東京は..._NEWLINE_人口は..."`` -> ``"東京\\n\\n東京は...\\n人口は..."``;
    text without the markup is returned unchanged.
    """
    if "_START_" not in text and "_NEWLINE_" not in text:
        return text
    blocks = _WIKI40B_MARKERS.split(text.replace("_NEWLINE_", "\n"))
    return "\n\n".join(block.strip() for block in blocks if block.strip())


def template_columns(template: str) -> list[str]:
    """The column names a ``str.format`` template uses, in order of first use."""
    names: list[str] = []
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        if not field_name.isidentifier():
            raise ConfigError(f"HFSourceConfig.template field {{{field_name}}} is not a column name")
        if field_name not in names:
            names.append(field_name)
    return names


def _data_builder(files: list[Path]) -> str:
    builders = set()
    for file in files:
        suffixes = [s for s in file.suffixes if s not in _COMPRESSION_SUFFIXES]
        builder = _BUILDERS_BY_SUFFIX.get(suffixes[-1] if suffixes else "")
        if builder is None:
            raise ConfigError(f"cannot tell the format of {file}: use one of {sorted(_BUILDERS_BY_SUFFIX)} "
                              "(optionally .gz), or give HFSourceConfig.path as the builder name with data_files")
        builders.add(builder)
    if len(builders) > 1:
        raise ConfigError(f"data files mix formats {sorted(builders)}: give one source per format")
    return builders.pop()


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() \
        or (path / "state.json").is_file()


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix in _BUILDERS_BY_SUFFIX \
        or Path(path).suffix in _COMPRESSION_SUFFIXES


def _hub_unreachable_message(config: HFSourceConfig, exc: BaseException) -> str:
    name = f", name={config.name!r}" if config.name else ""
    return (
        f"the Hugging Face Hub cannot be reached for dataset {config.path!r} ({exc}). "
        f"Pass a local copy instead: on a machine with hub access run "
        f"`datasets.load_dataset({config.path!r}{name}).save_to_disk('DIR')` and set path='DIR', "
        f"or give local files: path='train.jsonl' (also .txt, .parquet, .csv or a folder of them), "
        f"or path='json' with data_files=['train.jsonl']"
    )


def load_hf_dataset(config: HFSourceConfig) -> datasets.Dataset | datasets.IterableDataset:
    """The split ``config`` names, from a ``save_to_disk`` folder, local files, or the hub."""
    local = Path(config.path).expanduser()
    if local.is_dir() and _is_saved_dataset(local):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if config.split not in loaded:
                raise ConfigError(f"{local} has splits {sorted(loaded)}, not {config.split!r}: "
                                  "set HFSourceConfig.split")
            loaded = loaded[config.split]
        # Arrow files are memory-mapped and read row group by row group, so this already streams.
        return loaded

    common: dict[str, Any] = {"split": config.split, "streaming": config.streaming, "cache_dir": config.cache_dir}
    if config.path in _PACKAGED_BUILDERS or local.exists():
        if config.path in _PACKAGED_BUILDERS:
            builder, files = config.path, [Path(f).expanduser() for f in config.data_files]
            if not files:
                raise ConfigError(f"HFSourceConfig.path={config.path!r} needs data_files")
        else:
            files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")) \
                if local.is_dir() else [local]
            builder = _data_builder(files)
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ConfigError(f"data files not found: {missing}")
        if builder == "text":
            common["sample_by"] = config.text_sample_by
        return datasets.load_dataset(builder, data_files={config.split: [str(f) for f in files]}, **common)

    if _looks_local(config.path):
        raise ConfigError(f"{config.path} does not exist (HFSourceConfig.path names a local file or folder)")
    try:
        return datasets.load_dataset(config.path, config.name, revision=config.revision, **common)
    except ConnectionError as exc:
        raise SourceUnavailableError(_hub_unreachable_message(config, exc)) from exc
    except DatasetNotFoundError as exc:
        raise IngestError(f"dataset {config.path!r} is not on the Hugging Face Hub, or is gated/private "
                          f"(log in with `hf auth login`): {exc}") from exc
    except ValueError as exc:  # e.g. a missing or unknown config name: datasets lists the valid ones
        raise ConfigError(f"dataset {config.path!r}: {exc}") from exc


def _rows(ds: datasets.Dataset | datasets.IterableDataset, batch_size: int) -> Iterator[dict[str, Any]]:
    for batch in ds.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def iter_huggingface(config: HFSourceConfig, stats: SourceStats | None = None) -> Iterator[Document]:
    """Yield one ``Document`` per non-empty row, stopping at ``max_records`` rows or ``max_chars`` characters."""
    label = config.source_label
    stats = stats if stats is not None else SourceStats(label, config.KIND, config.path)
    ds = load_hf_dataset(config)
    needed = template_columns(config.template) if config.template else [config.text_column]
    if config.id_column and config.id_column not in needed:
        needed.append(config.id_column)
    available = ds.column_names  # None for some streamed sets: checked on the first row instead
    if available is not None:
        _check_columns(needed, available, label)
        ds = ds.select_columns(needed)
    first_row = 0
    if config.num_shards > 1:
        div, mod = divmod(len(ds), config.num_shards)  # Dataset.shard's contiguous blocks: where this one starts
        first_row = div * config.shard_index + min(config.shard_index, mod)
        ds = ds.shard(config.num_shards, config.shard_index, contiguous=True)
    batch_size = min(1000, config.max_records or 1000)
    chars = 0
    rows = itertools.islice(_rows(ds, batch_size), config.max_records)
    for index, row in enumerate(tqdm(rows, desc=label, unit="rec", total=config.max_records, disable=None),
                                start=first_row):
        if index == first_row and available is None:
            _check_columns(needed, list(row), label)
        stats.records_read += 1
        if config.template:
            text = config.template.format_map({c: "" if row[c] is None else str(row[c]) for c in needed})
        else:
            text = "" if row[config.text_column] is None else str(row[config.text_column])
        if config.clean_markup:
            text = clean_wiki40b(text)
        text = text.strip()
        if not text:
            stats.dropped["empty_text"] += 1
            continue
        if config.max_chars is not None and chars + len(text) > config.max_chars:
            stats.events["max_chars_reached"] += 1
            break
        chars += len(text)
        doc_id = str(row[config.id_column]) if config.id_column else f"{label}/{index}"
        stats.documents += 1
        yield Document(text=text, source=label, id=doc_id, meta={"row": index})
    logger.info("%s: %d rows read, %d documents, %d characters", label, stats.records_read, stats.documents, chars)


def _check_columns(needed: list[str], available: list[str], label: str) -> None:
    missing = [c for c in needed if c not in available]
    if missing:
        raise ConfigError(f"{label}: columns {missing} not in the dataset; it has {sorted(available)} "
                          "(set HFSourceConfig.text_column or template)")
