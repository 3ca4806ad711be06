"""The shared request machinery without HTTP: field validation, envelope normalisation, limits from the
environment, echo shortening and the cross-request micro-batcher."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from serving.base.batcher import MicroBatcher
from serving.base.request import RequestError, plain, shorten_in_place
from serving.base.scoring_guard import check_array_sizes, decode_json_object, install
from serving.base.settings import BatchConfig, Limits
from serving.embeddings.requests import parse_embeddings_request
from serving.rerank.requests import parse_rerank_request
from serving.ruri.register import RURI_V3_PROMPTS

LIMITS = Limits(max_items=4, max_chars=20, max_total_tokens=100)


def parse_embeddings(body):
    return parse_embeddings_request(body, LIMITS, RURI_V3_PROMPTS, dimension=32)


def test_request_error_is_an_invalid_parameter_mlflow_exception_naming_the_field():
    error = RequestError("input[2]", "must be a string")

    assert isinstance(error, MlflowException)
    assert error.get_http_status_code() == 400
    assert error.field == "input[2]"
    assert error.message == "input[2]: must be a string"


def test_embeddings_prefix_comes_from_input_type_instruction_or_apply_ruri_prefix():
    assert parse_embeddings({"input": "猫"}).prefix == ""
    assert parse_embeddings({"input": "猫", "input_type": "document"}).prefix == "検索文書: "
    assert parse_embeddings({"input": "猫", "input_type": "clustering"}).prefix == "トピック: "
    assert parse_embeddings({"input": "猫", "instruction": "分類: "}).prefix == "分類: "
    assert parse_embeddings({"input": "猫", "apply_ruri_prefix": True}).prefix == "検索クエリ: "
    assert parse_embeddings({"input": ["猫"], "apply_ruri_prefix": True}).prefix == "検索文書: "


def test_embeddings_item_errors_name_the_item():
    with pytest.raises(RequestError) as error:
        parse_embeddings({"input": ["猫", None]})
    assert error.value.field == "input[1]"


def test_item_count_is_checked_before_the_items():
    with pytest.raises(RequestError, match="has 5 items; the limit is 4"):
        parse_embeddings({"input": [None] * 5})


def test_booleans_are_not_integers():
    with pytest.raises(RequestError, match="dimensions: must be an integer"):
        parse_embeddings({"input": "猫", "dimensions": True})


def test_rerank_accepts_the_body_inside_input_or_as_is():
    body = {"query": "猫", "documents": ["a", {"text": "b"}], "top_k": 1, "return_documents": True}

    assert parse_rerank_request({"input": body}, LIMITS) == parse_rerank_request(body, LIMITS)
    parsed = parse_rerank_request(body, LIMITS)
    assert (parsed.documents, parsed.top_n, parsed.return_documents) == (["a", "b"], 1, True)


def test_plain_undoes_the_inputs_envelope_numpy_conversion():
    converted = {
        "query": np.array("猫"),
        "documents": np.array(["a", "b"]),
        "objects": np.array([{"text": "a"}, "b"], dtype=object),
        "top_n": np.array(2),
        "return_documents": np.array(True),
    }

    assert plain(converted) == {
        "query": "猫",
        "documents": ["a", "b"],
        "objects": [{"text": "a"}, "b"],
        "top_n": 2,
        "return_documents": True,
    }
    assert type(plain(converted)["top_n"]) is int


def test_shorten_in_place_summarises_long_values():
    body = {"input": ["x"] * 1000, "query": "y" * 5000, "documents": np.array(["z"] * 10), "top_n": np.array(3)}

    shorten_in_place(body)

    assert body["input"] == "<1000 items>"
    assert body["documents"] == "<10 items>"
    assert body["query"].endswith("(5000 characters)") and len(body["query"]) < 200
    assert body["top_n"] == 3


def test_shorten_in_place_reaches_into_nested_lists_long_keys_and_numpy_arrays():
    body = {"documents": [{"text": "d" * 500}, ["e" * 500]], "k" * 1000: 1}
    batch = np.array(["p" * 500, "q"] + ["r" * 200] * 998)  # what {"inputs": [prompt, ...]} becomes

    shorten_in_place(body)
    shorten_in_place(batch)

    assert body["documents"][0]["text"].endswith("(500 characters)")
    assert body["documents"][1][0].endswith("(500 characters)")
    assert "k" * 100 + "..." in body
    assert batch[0].endswith("(500 characters)") and batch[1] == "q"
    assert set(batch[4:]) == {"..."} and len(str(batch)) < 10_000


def test_shorten_in_place_clips_the_column_names_of_a_dataframe():
    frame = pd.DataFrame([{"prompt": "猫", "鍵" * 100_000: 1}])  # what dataframe_records becomes

    shorten_in_place(frame)

    assert list(frame.columns) == ["prompt", "鍵" * 100 + "..."]


def test_a_lone_surrogate_is_refused_naming_the_field():
    # JSON's "\ud800" escape decodes to a str that is not Unicode text; tokenizers cannot take it.
    with pytest.raises(RequestError, match=r"input\[1\]: is not valid Unicode: a lone surrogate '\\ud800'"):
        parse_embeddings({"input": ["猫", "a\ud800"]})


def test_an_unknown_key_is_named_clipped():
    with pytest.raises(RequestError) as error:
        parse_embeddings({"input": "猫", "鍵" * 10_000: 1})
    assert error.value.field == "鍵" * 100 + "..."


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (b"", "body", "is not valid JSON: Expecting value at line 1 column 1"),
        (b'{"input": "\xff"}', "body", "is not valid JSON: not UTF-8 text (invalid start byte at byte 11)"),
        (b'{"input": [1, 2}', "body", "is not valid JSON"),
        (b"[1, 2]", "body", "must be a JSON object (see the model's request shapes), got list"),
        (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body", "nests too deeply to parse"),
        (b'{"input": [{"a": [[[1]]]}]}', "input[0].a[0][0]", "nests deeper than 4 levels"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused_as_a_whole(body, field, problem):
    with pytest.raises(RequestError) as error:
        decode_json_object(body, max_depth=4)
    assert error.value.field == field
    assert problem in error.value.message


def test_integers_too_long_to_convert_decode_as_infinities_so_the_field_check_names_them():
    body = decode_json_object(b'{"dimensions": ' + b"9" * 5000 + b', "top_n": -' + b"9" * 5000 + b"}", max_depth=4)

    assert body == {"dimensions": float("inf"), "top_n": float("-inf")}
    with pytest.raises(RequestError, match="dimensions: must be an integer, got float"):
        parse_embeddings({"input": "猫", "dimensions": body["dimensions"]})


def test_an_inputs_value_numpy_would_blow_up_is_refused_before_mlflow_converts_it():
    # numpy stores each string at the longest one's width: 2048 x 1 MB characters, 8 GB.
    body = {"inputs": {"query": "猫", "documents": [1] * 2047 + ["x" * 1_000_000]}}

    with pytest.raises(RequestError, match=r"inputs\.documents: MLflow's inputs envelope would make this a numpy "
                                           r"array of 2048 cells of 1000000 characters"):
        check_array_sizes(body, Limits(max_items=2048, max_chars=50_000))
    check_array_sizes({"inputs": {"documents": ["x" * 50_000] * 2048}}, Limits(max_items=2048, max_chars=50_000))


def test_the_scoring_server_guard_is_installed_only_inside_the_server():
    assert install(Limits()) is False  # this process is no `mlflow models serve`


def test_limits_and_batching_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEUROQ_SERVING_MAX_ITEMS", "7")
    monkeypatch.setenv("NEUROQ_SERVING_BATCH_WAIT_MS", "0.5")

    assert Limits.from_env() == Limits(max_items=7)
    assert BatchConfig.from_env().wait_ms == 0.5


def test_a_malformed_limit_names_the_variable(monkeypatch):
    monkeypatch.setenv("NEUROQ_SERVING_MAX_CHARS", "lots")
    with pytest.raises(ValueError, match="NEUROQ_SERVING_MAX_CHARS='lots' is not a number"):
        Limits.from_env()


class Recorder:
    """A fake model: each item is a string, its output the string upper-cased; records batches."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list[str]] = []
        self.delay = delay

    def __call__(self, batch):
        self.batches.append(list(batch))
        time.sleep(self.delay)
        return [item.upper() for item in batch]


def run(batcher: MicroBatcher, items):
    with batcher.reserve() as ticket:
        return ticket.run(items)


def test_batches_are_length_sorted_and_bounded_by_size_and_padded_tokens():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, BatchConfig(batch_size=3, batch_tokens=12, wait_ms=0))
    items = ["a", "bbbbbb", "cc", "ddd", "e", "ffff"]

    assert run(batcher, items) == [i.upper() for i in items]
    assert recorder.batches == [["bbbbbb", "ffff"], ["ddd", "cc", "a"], ["e"]]


def test_concurrent_requests_share_forward_passes():
    recorder = Recorder(delay=0.05)
    batcher = MicroBatcher(recorder, BatchConfig(batch_size=64, wait_ms=50))
    results = {}

    def client(i):
        results[i] = run(batcher, [f"r{i}-a", f"r{i}-b"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == {i: [f"R{i}-A", f"R{i}-B"] for i in range(8)}
    assert batcher.batches_run < 8  # 8 requests, fewer forward passes


def test_a_lone_request_does_not_wait_for_company():
    batcher = MicroBatcher(Recorder(), BatchConfig(wait_ms=2000))

    started = time.monotonic()
    run(batcher, ["a"])

    assert time.monotonic() - started < 1.0


def test_a_request_that_fails_before_submitting_releases_its_reservation():
    batcher = MicroBatcher(Recorder(), BatchConfig(wait_ms=2000))
    with pytest.raises(RequestError), batcher.reserve():
        raise RequestError("input", "bad")

    started = time.monotonic()
    run(batcher, ["a"])

    assert time.monotonic() - started < 1.0


def test_a_model_error_reaches_the_waiting_requests_and_the_batcher_survives():
    def flaky(batch):
        if "boom" in batch:
            raise RuntimeError("model failed")
        return batch

    batcher = MicroBatcher(flaky, BatchConfig(wait_ms=0))

    with pytest.raises(RuntimeError, match="model failed"):
        run(batcher, ["boom"])
    assert run(batcher, ["ok"]) == ["ok"]


def test_an_idle_model_thread_ends_and_its_openmp_threads_with_it():
    """libgomp counts every OpenMP thread of the process, idle or not, and stops spinning between parallel regions
    once they outnumber the CPUs: a model that is not called must not keep its team (batcher.py)."""
    import torch

    def matmul(batch):
        torch.ones(512, 512) @ torch.ones(512, 512)  # a parallel region: this thread gets its OpenMP team
        return batch

    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    before = os_threads()
    batcher = MicroBatcher(matmul, BatchConfig(wait_ms=0, idle_ms=50))
    assert run(batcher, ["a"]) == ["a"]
    # the model thread, and its team's OMP_NUM_THREADS - 1 threads
    assert os_threads() >= before + torch.get_num_threads()
    deadline = time.monotonic() + 10
    while os_threads() > before:
        assert time.monotonic() < deadline, f"{os_threads()} threads, {before} before the first request"
        time.sleep(0.02)
    assert run(batcher, ["b"]) == ["b"]  # on a new model thread
