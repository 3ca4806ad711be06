"""A request's prompts run in one generate call; concurrent requests with equal settings may share one, seeded
requests never do."""

from __future__ import annotations

import pytest

import serving.generation.model


@pytest.fixture
def generate_calls(monkeypatch) -> list[int]:
    """Rows of every generate_ids call the pyfunc makes."""
    calls: list[int] = []
    real = serving.generation.model.generate_ids

    def counting(model, prompt_ids, config, **kwargs):
        calls.append(len(prompt_ids) * config.n)
        return real(model, prompt_ids, config, **kwargs)

    monkeypatch.setattr(serving.generation.model, "generate_ids", counting)
    return calls


def test_a_list_of_prompts_is_one_batched_generate_call(pyfunc, generate_calls):
    answer = pyfunc.predict({"prompt": [f"質問{i}" for i in range(8)], "n": 2, "max_tokens": 3})
    assert len(answer["choices"]) == 16
    assert generate_calls == [16]


def test_batch_scoring_rows_are_one_batched_generate_call(pyfunc, generate_calls):
    assert len(pyfunc.predict(["一", "二", "三", "四"])) == 4
    assert generate_calls == [4]


def test_jobs_with_equal_settings_share_a_call_and_seeded_jobs_run_alone(pyfunc, generate_calls):
    model = pyfunc.unwrap_python_model()
    bodies = [
        {"prompt": ["a", "b"], "max_tokens": 2},
        {"prompt": "c", "max_tokens": 2},
        {"prompt": "d", "max_tokens": 2, "seed": 7},
        {"prompt": "e", "max_tokens": 3},
    ]
    jobs = [job for body in bodies for job in model.prepare(model.parse(body))]
    results = model.run_batch(jobs)
    assert generate_calls == [3, 1, 1]
    assert [len(r) for r in results] == [2, 1, 1, 1]
    alone = model.run_batch([jobs[2]])
    assert alone[0][0][0].text == results[2][0][0].text, "a seeded job's answer does not depend on its neighbours"


def test_requests_that_generate_nothing_do_not_queue_for_the_model_thread(pyfunc):
    batcher = pyfunc.unwrap_python_model().batcher
    before = batcher.requests_run

    assert pyfunc.predict({"input": {"action": "health"}})["status"] == "healthy"
    assert pyfunc.predict({"input": {"action": "status"}})["status"] == "ready"
    assert pyfunc.predict({"input": {"action": "clear_session", "session_id": "nobody"}})["cleared_turns"] == 0
    assert batcher.requests_run == before

    pyfunc.predict({"prompt": "こんにちは", "max_tokens": 1})
    assert batcher.requests_run == before + 1
