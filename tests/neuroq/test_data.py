"""neuroq.data (reading corpora, the deterministic split) and neuroq.shards (token shards, memory-mapped blocks)."""

from __future__ import annotations

import gzip
import itertools
import json
import pickle
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from neuroq.corpus import bundled_dialogues
from neuroq.data import count_chars, is_validation, read_texts, split_documents
from neuroq.errors import ConfigError, DataError
from neuroq.shards import MANIFEST_NAME, PackedBlocks, load_manifest, write_token_shards
from neuroq.tokenizer import BOS_ID, EOS_ID, NeuroQTokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tokenizer() -> NeuroQTokenizer:
    return NeuroQTokenizer.train(bundled_dialogues(), TokenizerConfig(vocab_size=1500))


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return bundled_dialogues()[:200]


def expected_stream(tokenizer: NeuroQTokenizer, docs: Sequence[str]) -> list[int]:
    return [i for doc in docs for i in [BOS_ID, *tokenizer.encode(doc), EOS_ID]]


# ---- read_texts -----------------------------------------------------------------------------------------------

def test_txt_files_give_one_document_per_blank_line_separated_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("一行目\r\n二行目\r\n\r\n\r\n　次の段落\r\n  \r\n最後\r\n".encode())
    assert list(read_texts(path)) == ["一行目\n二行目", "　次の段落", "最後"]
    assert list(read_texts(path, sample_by="line")) == ["一行目", "二行目", "　次の段落", "最後"]
    assert list(read_texts(path, sample_by="document")) == ["一行目\n二行目\n\n\n　次の段落\n  \n最後\n"]


def test_jsonl_and_gzipped_files_give_their_text_fields(tmp_path: Path) -> None:
    records = [{"text": "一つ目", "id": 1}, {"text": "二つ目\n改行あり"}, {"text": "  "}]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "\n"
    (tmp_path / "a.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("圧縮された\n\n本文")
    assert list(read_texts(tmp_path / "a.jsonl")) == ["一つ目", "二つ目\n改行あり"]
    assert list(read_texts(tmp_path / "b.jsonl.gz")) == ["一つ目", "二つ目\n改行あり"]
    assert list(read_texts(tmp_path / "c.txt.gz")) == ["圧縮された", "本文"]


def test_directories_are_read_recursively_in_sorted_order_skipping_other_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("二", encoding="utf-8")
    (tmp_path / "a.txt").write_text("一", encoding="utf-8")
    (tmp_path / "b" / "3.jsonl").write_text('{"text": "三"}\n', encoding="utf-8")
    (tmp_path / "README.md").write_text("読まない", encoding="utf-8")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "0.txt").write_text("隠し", encoding="utf-8")
    assert list(read_texts(tmp_path)) == ["一", "二", "三"]
    assert list(read_texts([tmp_path / "b" / "2.txt", str(tmp_path / "a.txt")])) == ["二", "一"]


def test_bad_paths_fail_at_once_with_the_path_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.txt does not exist"):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes\.md: unsupported file type; expected one of \.txt"):
        read_texts(tmp_path / "notes.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        read_texts(tmp_path / "empty")
    with pytest.raises(ConfigError, match="sample_by"):
        read_texts(tmp_path / "notes.md", sample_by="sentence")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("no_field.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', r"no_field\.jsonl:2: expected a JSON object with a 'text'"),
    ("not_json.jsonl", b'{"text": "ok"}\n{text: x}\n', r"not_json\.jsonl:2: not valid JSON"),
    ("number.jsonl", b'{"text": 3}\n', r"number\.jsonl:1: field 'text' is int"),
    ("latin1.txt", "café".encode("latin-1"), r"latin1\.txt is not valid UTF-8"),
    ("cut.txt.gz", gzip.compress("途中で切れた".encode() * 100)[:40], r"cut\.txt\.gz is not a complete gzip file"),
])
def test_unreadable_content_raises_data_error_naming_file_and_line(tmp_path: Path, name: str, content: bytes,
                                                                   message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(read_texts(tmp_path / name))


@pytest.mark.needs_shared_data
def test_the_aozora_corpus_streams_as_documents(aozora_path: Path) -> None:
    first = list(itertools.islice(read_texts(aozora_path), 3))
    assert len(first) == 3 and all(len(doc) > 100 for doc in first)


def test_count_chars_counts_raw_characters() -> None:
    assert count_chars(["ｶﾀｶﾅ", "👍🏽", ""]) == 4 + 2


# ---- split_documents -------------------------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_complete() -> None:
    docs = [f"文書{i}番: {'あいうえお'[i % 5] * (i % 7 + 1)}" for i in range(1000)]
    train, val = split_documents(docs, val_fraction=0.1)
    assert (train, val) == split_documents(list(docs), val_fraction=0.1)
    assert not set(train) & set(val)
    assert Counter(train) + Counter(val) == Counter(docs)
    assert 60 <= len(val) <= 140
    assert [d for d in docs if d in set(val)] == val  # input order kept


def test_split_does_not_change_when_documents_are_reordered_or_added() -> None:
    docs = [f"段落{i}" for i in range(300)]
    train, val = split_documents(docs, val_fraction=0.2)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    train2, val2 = split_documents(shuffled + ["新しい段落"], val_fraction=0.2)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    assert set(val2) - set(val) <= {"新しい段落"}
    assert all(is_validation(d, 0.2) == (d in set(val)) for d in docs)


def test_salt_gives_a_different_split() -> None:
    docs = [f"段落{i}" for i in range(300)]
    assert split_documents(docs, 0.2)[1] != split_documents(docs, 0.2, salt="run-2")[1]


def test_identical_documents_always_land_on_the_same_side() -> None:
    docs = ["同じ文", "別の文", "同じ文", "三つ目", "同じ文"] * 3
    train, val = split_documents(docs, val_fraction=0.4)
    assert not set(train) & set(val)


@pytest.mark.parametrize("salt", [str(i) for i in range(20)])
def test_two_distinct_documents_always_give_one_validation_and_one_training_document(salt: str) -> None:
    train, val = split_documents(["一つ目の文書", "二つ目の文書"], val_fraction=0.01, salt=salt)
    assert len(train) == len(val) == 1
    train, val = split_documents(["一つ目の文書", "二つ目の文書"], val_fraction=0.99, salt=salt)
    assert len(train) == len(val) == 1


def test_zero_val_fraction_means_no_validation_set_and_bad_fractions_are_refused() -> None:
    assert split_documents(["a", "b", "c"], val_fraction=0) == (["a", "b", "c"], [])
    assert split_documents(["only"], val_fraction=0.5) in ((["only"], []), ([], ["only"]))
    for bad in (-0.1, 1.0, 1.5, True, "0.1"):
        with pytest.raises(ConfigError, match="val_fraction"):
            split_documents(["a", "b"], val_fraction=bad)  # type: ignore[arg-type]


# ---- write_token_shards ----------------------------------------------------------------------------------------

def read_stream(shard_dir: Path) -> list[int]:
    manifest = load_manifest(shard_dir)
    return [int(i) for s in manifest["shards"]
            for i in np.fromfile(shard_dir / s["file"], dtype=manifest["dtype"])]


def test_shards_hold_bos_ids_eos_per_document_and_a_manifest(tokenizer: NeuroQTokenizer, docs: list[str],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "train"
    manifest = write_token_shards(iter(docs), tokenizer, out, shard_tokens=1000)
    stream = expected_stream(tokenizer, docs)
    assert read_stream(out) == stream
    assert manifest == json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["n_tokens"] == len(stream) and manifest["n_docs"] == len(docs)
    assert manifest["n_chars"] == count_chars(docs)
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 1500
    assert manifest["tokenizer_sha256"] == tokenizer.sha256
    assert [s["n_tokens"] for s in manifest["shards"]][:-1] == [1000] * (len(manifest["shards"]) - 1)
    assert len(manifest["shards"]) == -(-len(stream) // 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # the temporary build directory is gone


class WideTokenizer:
    """Stands in for a tokenizer with more than 65,536 pieces, which would take minutes to train."""

    vocab_size = 70_000
    sha256 = "0" * 64

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        return [[BOS_ID, *(65_000 + ord(c) % 5000 for c in t), EOS_ID] for t in texts]


def test_vocabularies_over_65536_pieces_are_stored_as_uint32(tmp_path: Path) -> None:
    manifest = write_token_shards(["大きな語彙"], WideTokenizer(), tmp_path / "wide")  # type: ignore[arg-type]
    assert manifest["dtype"] == "uint32"
    assert read_stream(tmp_path / "wide") == WideTokenizer().encode_batch(["大きな語彙"])[0]


def test_rewriting_replaces_a_previous_shard_set_but_never_other_directories(tokenizer: NeuroQTokenizer,
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_token_shards(["最初の版"], tokenizer, out)
    write_token_shards(["二番目の版"], tokenizer, out)
    assert read_stream(out) == expected_stream(tokenizer, ["二番目の版"])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("大事", encoding="utf-8")
    with pytest.raises(DataError, match="refusing to replace"):
        write_token_shards(["文"], tokenizer, precious)
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "大事"


def test_a_failure_while_encoding_leaves_no_partial_output(tokenizer: NeuroQTokenizer, tmp_path: Path) -> None:
    def failing_docs() -> Iterator[str]:
        yield "途中まで"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_token_shards(failing_docs(), tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bad_shard_sizes_are_refused(tokenizer: NeuroQTokenizer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shard_tokens"):
        write_token_shards(["文"], tokenizer, tmp_path / "x", shard_tokens=0)


# ---- PackedBlocks ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_dir(tokenizer: NeuroQTokenizer, docs: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("blocks") / "train"
    write_token_shards(docs, tokenizer, out, shard_tokens=100)
    return out


def test_blocks_are_non_overlapping_windows_with_targets_shifted_by_one(tokenizer: NeuroQTokenizer,
                                                                       docs: list[str], shard_dir: Path) -> None:
    stream = expected_stream(tokenizer, docs)
    blocks = PackedBlocks(shard_dir, block_size=64)
    assert len(blocks) == (len(stream) - 1) // 64
    assert blocks.n_tokens == len(stream) and blocks.n_target_tokens == len(blocks) * 64
    for i in (0, 1, len(blocks) // 2, len(blocks) - 1):
        x, y = blocks[i]
        assert x.shape == y.shape == (64,) and x.dtype == y.dtype == torch.int64
        assert x.tolist() == stream[i * 64:(i + 1) * 64]
        assert y.tolist() == stream[i * 64 + 1:(i + 1) * 64 + 1]
    assert blocks[-1][0].tolist() == blocks[len(blocks) - 1][0].tolist()
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_blocks_cross_shard_boundaries(tokenizer: NeuroQTokenizer, docs: list[str], shard_dir: Path) -> None:
    stream = expected_stream(tokenizer, docs)
    blocks = PackedBlocks(shard_dir, block_size=250)  # every window spans three 100-token shards
    x, y = blocks[1]
    assert x.tolist() == stream[250:500] and y.tolist() == stream[251:501]
    assert blocks.tokens(95, 305).tolist() == stream[95:305]


def test_blocks_read_through_memory_maps_and_pickle_without_their_data(shard_dir: Path) -> None:
    blocks = PackedBlocks(shard_dir, block_size=32)
    assert all(isinstance(shard, np.memmap) for shard in blocks.shards)
    blocks[0]
    payload = pickle.dumps(blocks)
    assert len(payload) < sum(shard.nbytes for shard in blocks.shards) / 2  # the manifest, not the tokens
    clone = pickle.loads(payload)
    assert torch.equal(clone[5][0], blocks[5][0])


def test_blocks_feed_a_dataloader(shard_dir: Path) -> None:
    loader = DataLoader(PackedBlocks(shard_dir, block_size=16), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_blocks_expose_character_and_token_counts_for_bits_per_char(docs: list[str], shard_dir: Path) -> None:
    blocks = PackedBlocks(shard_dir, block_size=64)
    assert blocks.n_chars == count_chars(docs)
    assert blocks.manifest["n_docs"] == len(docs)


def test_too_little_text_for_one_block_is_a_clear_error(tokenizer: NeuroQTokenizer, tmp_path: Path) -> None:
    write_token_shards(["短い"], tokenizer, tmp_path / "tiny")
    with pytest.raises(DataError, match="fewer than one block"):
        PackedBlocks(tmp_path / "tiny", block_size=256)
    with pytest.raises(ConfigError, match="block_size"):
        PackedBlocks(tmp_path / "tiny", block_size=0)


def test_missing_manifest_and_truncated_shards_are_refused(tokenizer: NeuroQTokenizer, docs: list[str],
                                                          tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no manifest.json"):
        PackedBlocks(tmp_path, block_size=8)
    out = tmp_path / "cut"
    write_token_shards(docs, tokenizer, out, shard_tokens=100)
    shard = out / "shard_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"shard_00001\.bin should hold 100 tokens \(200 bytes\) but has 190"):
        PackedBlocks(out, block_size=8)
