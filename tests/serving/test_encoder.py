"""Tokenisation for serving: truncation keeps the head (where prefixes sit), pairs keep the query, and the
shared tokenizer gives the same answer from many threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.base.encoder import BI_ENCODER, CROSS_ENCODER, TransformerRunner, load_model
from tests.serving.helpers import MAX_SEQ_LENGTH

PREFIX = "検索クエリ: "
LONG = "富士山は日本で一番高い山です。京都には古い寺がたくさんあります。" * 4


@pytest.fixture(scope="module")
def bi_runner(tiny_bi_encoder_dir) -> TransformerRunner:
    return TransformerRunner(load_model(tiny_bi_encoder_dir, BI_ENCODER, device="cpu"), BI_ENCODER)


def test_truncation_cuts_the_tail_and_keeps_the_prefix_and_end_token(bi_runner):
    tokenizer = bi_runner.model.tokenizer
    n_prefix = bi_runner.count_tokens(PREFIX)

    (long,) = bi_runner.tokenize([PREFIX + LONG])
    (short,) = bi_runner.tokenize([PREFIX + "猫"])

    assert len(long) == MAX_SEQ_LENGTH
    assert long.ids[: 1 + n_prefix] == short.ids[: 1 + n_prefix]  # [CLS] + the prefix
    assert tokenizer.decode(long.ids[1 : 1 + n_prefix]).replace(" ", "") == PREFIX.replace(" ", "")
    assert long.ids[-1] == tokenizer.sep_token_id


def test_pairs_are_truncated_in_the_document_first(tiny_cross_encoder_dir):
    runner = TransformerRunner(load_model(tiny_cross_encoder_dir, CROSS_ENCODER, device="cpu"), CROSS_ENCODER)
    query = "日本の首都はどこですか"

    (pair,) = runner.tokenize_pairs([(query, LONG * 3)])

    assert len(pair) == runner.max_length
    query_ids = runner.tokenize([query])[0].ids[:-1]  # [CLS] query, without its [SEP]
    assert pair.ids[: len(query_ids)] == query_ids


def test_the_shared_tokenizer_is_consistent_across_threads(bi_runner):
    texts = [f"{PREFIX}{LONG[: i % 40 + 1]}" for i in range(200)]
    serial = [t.ids for t in bi_runner.tokenize(texts)]

    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda i: bi_runner.tokenize([texts[i]])[0].ids, range(len(texts))))

    assert parallel == serial
