"""`session_id` history: bounded, cleared on request, and shared by every worker of `mlflow models serve -w 2`."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import requests

from serving.generation.sessions import SessionStore, Turn


def test_history_keeps_the_newest_turns_within_the_turn_bound(tmp_path):
    store = SessionStore(tmp_path, max_turns=3, max_tokens=1000)
    for i in range(5):
        store.append("user_123", f"q{i}", f"a{i}", tokens=4)
    assert store.history("user_123") == [Turn(f"q{i}", f"a{i}", 4) for i in (2, 3, 4)]


def test_history_keeps_the_newest_turns_within_the_token_bound(tmp_path):
    store = SessionStore(tmp_path, max_turns=100, max_tokens=10)
    for tokens in (6, 3, 4):
        store.append("s", "q", "a", tokens=tokens)
    assert [t.tokens for t in store.history("s")] == [3, 4]


def test_expired_turns_are_not_returned_and_get_deleted(tmp_path):
    store = SessionStore(tmp_path, ttl_seconds=0.2)
    store.append("old", "q", "a", tokens=1)
    time.sleep(0.3)
    assert store.history("old") == []
    store.append("new", "q", "a", tokens=1)
    assert store.clear("old") == 0, "appending deletes expired turns of every session"


def test_clear_forgets_one_session_only(tmp_path):
    store = SessionStore(tmp_path)
    store.append("a", "q", "a", tokens=1)
    store.append("a", "q2", "a2", tokens=1)
    store.append("b", "q", "a", tokens=1)
    assert store.clear("a") == 2
    assert store.history("a") == []
    assert len(store.history("b")) == 1


@pytest.mark.parametrize("session_id", ["../../etc/passwd", "", "a b", "x" * 129, "-leading-dash", "名前"])
def test_session_ids_outside_the_pattern_are_refused(tmp_path, session_id):
    with pytest.raises(ValueError, match="session_id must match"):
        SessionStore(tmp_path).history(session_id)


def test_an_empty_earlier_answer_does_not_break_the_session(pyfunc):
    pyfunc.unwrap_python_model().sessions.append("quiet", "こんにちは", "", tokens=3)
    answer = pyfunc.predict({"input": {"action": "generate", "prompt": "元気?", "session_id": "quiet",
                                       "max_length": 2}})
    assert answer["history_turns"] == 1


def _append_many(directory: str, worker: int, n: int) -> None:
    store = SessionStore(directory, max_turns=1000, max_tokens=10**6, busy_timeout_s=30)
    for i in range(n):
        store.append("shared", f"w{worker}-q{i}", "a", tokens=1)
        store.append(f"own-{worker}", f"q{i}", "a", tokens=1)


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = SessionStore(tmp_path, max_turns=1000, max_tokens=10**6)
    assert len(store.history("shared")) == 160
    assert all(len(store.history(f"own-{w}")) == 40 for w in range(4))


def test_history_is_shared_by_two_server_workers_and_clear_session_empties_it(served_two_workers):
    url = f"{served_two_workers.url}/invocations"

    def generate(prompt: str) -> dict:
        body = {"input": {"action": "generate", "prompt": prompt, "session_id": "user_123", "max_length": 2}}
        # A new connection per request, so the kernel may hand each one to either worker.
        response = requests.post(url, json=body, timeout=60, headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        return response.json()

    pids: list[int] = []
    deadline = time.monotonic() + 90
    while len(set(pids)) < 2 or len(pids) < 4:
        assert time.monotonic() < deadline, f"every request went to worker(s) {set(pids)}"
        answer = generate(f"質問{len(pids)}")
        # Each request sees every earlier turn, whichever worker wrote it (bounded by the 8-turn default).
        assert answer["history_turns"] == min(len(pids), 8)
        pids.append(answer["worker_pid"])
    served_pids = set(pids)
    assert len(served_pids) == 2

    cleared = requests.post(url, json={"input": {"action": "clear_session", "session_id": "user_123"}}, timeout=60)
    assert cleared.json() == {"status": "success", "session_id": "user_123", "cleared_turns": min(len(pids), 8)}
    assert generate("最初から")["history_turns"] == 0
