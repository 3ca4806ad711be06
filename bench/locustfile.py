"""Locust load test of the three served models: NeuroQ generation, Ruri embeddings, Ruri rerank.

One locust process drives three `mlflow models serve` processes, one per model, each at its own base URL:

    locust -f bench/locustfile.py --headless -u 6 -r 6 -t 30s --stop-timeout 30 --max-requests 300 \
        --only-summary --csv /tmp/load \
        --generation-host http://127.0.0.1:5000 --embeddings-host http://127.0.0.1:5001 \
        --rerank-host http://127.0.0.1:5002

Every user is a closed-loop client (no think time): with one user class per endpoint and equal weights, `-u 3k`
keeps k requests in flight at each server. Name user classes after the options to drive fewer endpoints
(`... EmbeddingsUser RerankUser`). The run ends at `-t` or once every driven endpoint has sent `--max-requests`
requests, whichever comes first. Hosts can also come from LOCUST_GENERATION_HOST, LOCUST_EMBEDDINGS_HOST and
LOCUST_RERANK_HOST; never pass `--host`, which would send every class to one server.

A request fails (and counts in the CSV's Failure Count) when the status is not 200 or the body is not the shape
serving/README.md promises; connection errors and client timeouts (`--request-timeout`) are failures too.
Request names in the statistics: generation/completions, generation/chat, embeddings, rerank.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import gevent
from locust import HttpUser, constant, events, task
from locust.exception import StopUser
from locust.stats import CSV_STATS_INTERVAL_SEC

# Short, varied Japanese texts: requests stay small, so the load measures serving, not one huge forward pass.
TEXTS = (
    "東京は日本の首都で、世界有数の大都市です。",
    "猫はかわいい動物で、一日の大半を寝て過ごします。",
    "人工知能の進化は社会にどのような影響を与えるでしょうか。",
    "名古屋大学で開発された日本語の埋め込みモデルについて教えてください。",
    "梅雨は北海道と小笠原諸島を除く日本でみられる気象現象です。",
    "犬が公園を走っていて、子供たちが庭で遊んでいます。",
    "富士山は日本で一番高い山で、多くの登山者が訪れます。",
    "明日の天気は雨のち晴れで、朝の電車は遅れるかもしれません。",
    "彼は図書館で本を読み、私は毎朝コーヒーを飲みます。",
    "機械学習のモデルを評価するには検証用のデータが必要です。",
    "京都には古い寺や神社がたくさんあり、秋の紅葉が有名です。",
    "新幹線は東京と大阪を約二時間半で結んでいます。",
)
PROMPTS = (
    "こんにちは。今日の天気はどうですか?",
    "日本の首都について教えてください。",
    "おすすめの本を一冊紹介してください。",
    "機械学習とは何ですか?",
    "週末は何をして過ごしますか?",
    "富士山に登るにはどうすればいいですか?",
)
SYSTEM_PROMPT = "あなたは親切な日本語のアシスタントです。"

DEFAULT_HOSTS = {"generation": "http://127.0.0.1:5000", "embeddings": "http://127.0.0.1:5001",
                 "rerank": "http://127.0.0.1:5002"}


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    for endpoint, url in DEFAULT_HOSTS.items():
        parser.add_argument(f"--{endpoint}-host", default=url, env_var=f"LOCUST_{endpoint.upper()}_HOST",
                            help=f"base URL of the {endpoint} server (mlflow models serve)")
    parser.add_argument("--max-requests", type=int, default=0, env_var="LOCUST_MAX_REQUESTS",
                        help="requests per endpoint before the run ends (0: only -t bounds it)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each generation request")
    parser.add_argument("--embed-texts", type=int, default=4, help="texts per embeddings request")
    parser.add_argument("--rerank-documents", type=int, default=8, help="documents per rerank request")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="client timeout in seconds; a request that runs longer is a failure")


class RequestBudget:
    """Requests each endpoint may still start under --max-requests. Users run as gevent greenlets in one
    thread, switching only on I/O, so plain counters need no lock."""

    def __init__(self) -> None:
        self.limit = 0
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()

    def take(self, endpoint: str) -> bool:
        if self.limit and self.started[endpoint] >= self.limit:
            return False
        self.started[endpoint] += 1
        return True

    def finish(self, endpoint: str, environment) -> None:
        self.finished[endpoint] += 1
        driven = {user_class.endpoint for user_class in environment.user_classes}
        if self.limit and all(self.finished[e] >= self.limit for e in driven):
            # quit() stops every user, this one included: let it return first.
            gevent.spawn(environment.runner.quit)


BUDGET = RequestBudget()


@events.init.add_listener
def _configure(environment, **_) -> None:
    options = environment.parsed_options
    if options is None:  # locust used as a library: the caller sets hosts itself
        return
    if options.host:
        raise SystemExit("--host would send every endpoint to one server: use --generation-host, "
                         "--embeddings-host and --rerank-host")
    BUDGET.limit = options.max_requests
    for user_class in environment.user_classes:
        user_class.host = getattr(options, f"{user_class.endpoint}_host")


@events.test_stop.add_listener
def _let_csv_catch_up(environment, **_) -> None:
    """Locust rewrites its --csv files once a second and not at exit, so the requests of the last second would be
    missing from them (locust issues 1806, 2299): give its writer one more turn."""
    if environment.parsed_options is not None and environment.parsed_options.csv_prefix:
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)


class ShapeError(ValueError):
    """The server answered 200 with a body that is not the documented response."""


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ShapeError(problem)


def check_completion(body, *, chat: bool, max_tokens: int) -> None:
    _require(isinstance(body, dict), f"expected an object, got {type(body).__name__}")
    _require(body.get("object") == ("chat.completion" if chat else "text_completion"), f"object {body.get('object')!r}")
    choices = body.get("choices")
    _require(isinstance(choices, list) and len(choices) == 1, "expected exactly one choice")
    choice = choices[0]
    if chat:
        message = choice.get("message") or {}
        _require(message.get("role") == "assistant" and isinstance(message.get("content"), str),
                 "choices[0].message is not an assistant message")
    else:
        _require(isinstance(choice.get("text"), str), "choices[0].text is not a string")
    _require(choice.get("finish_reason") in ("stop", "length"), f"finish_reason {choice.get('finish_reason')!r}")
    completion_tokens = (body.get("usage") or {}).get("completion_tokens")
    _require(isinstance(completion_tokens, int) and 0 <= completion_tokens <= max_tokens,
             f"usage.completion_tokens {completion_tokens!r} outside [0, {max_tokens}]")


def check_embeddings(body, *, n_texts: int) -> None:
    _require(isinstance(body, dict) and body.get("object") == "list", "expected {'object': 'list', ...}")
    data = body.get("data")
    _require(isinstance(data, list) and len(data) == n_texts, f"expected {n_texts} embeddings")
    dims = {len(item.get("embedding") or ()) for item in data}
    _require(len(dims) == 1 and dims.pop() > 0, "embeddings are empty or of different sizes")
    for i, item in enumerate(data):
        _require(item.get("index") == i, f"data[{i}].index is {item.get('index')!r}")
        vector = item["embedding"]
        _require(all(isinstance(x, float) and math.isfinite(x) for x in vector), f"data[{i}] has a non-finite value")
        norm = math.sqrt(sum(x * x for x in vector))
        _require(abs(norm - 1.0) < 1e-3, f"data[{i}] has norm {norm:.4f}, not 1")


def check_rerank(body, *, n_documents: int, top_n: int) -> None:
    _require(isinstance(body, dict), f"expected an object, got {type(body).__name__}")
    results = body.get("results")
    _require(isinstance(results, list) and len(results) == min(top_n, n_documents),
             f"expected {min(top_n, n_documents)} results")
    indices = [r.get("index") for r in results]
    _require(all(isinstance(i, int) and 0 <= i < n_documents for i in indices) and len(set(indices)) == len(indices),
             f"bad result indices {indices}")
    scores = [r.get("relevance_score") for r in results]
    _require(all(isinstance(s, float) and math.isfinite(s) for s in scores), "non-finite relevance_score")
    _require(scores == sorted(scores, reverse=True), "results are not sorted by relevance_score")


class ModelUser(HttpUser):
    """A closed-loop client of one endpoint: POST /invocations, check the answer, send the next one."""

    abstract = True
    endpoint = ""
    wait_time = constant(0)

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        # Each user walks the texts from its own offset, so concurrent requests differ.
        self.turn = itertools.count(id(self) % len(TEXTS))

    def pick(self, pool: tuple[str, ...], count: int = 1) -> list[str]:
        start = next(self.turn)
        return [pool[(start + i) % len(pool)] for i in range(count)]

    def invoke(self, name: str, body: dict, check) -> None:
        if not BUDGET.take(self.endpoint):
            raise StopUser()
        try:
            with self.client.post("/invocations", json=body, name=name, timeout=self.options.request_timeout,
                                  catch_response=True) as response:
                if response.status_code == 0:  # no HTTP answer: refused, reset or timed out
                    response.failure(f"no response: {response.error!r}")
                    return
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}: {(response.text or '')[:300]}")
                    return
                try:
                    check(response.json())
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    response.failure(f"unexpected body ({error}): {response.text[:300]}")
        finally:
            BUDGET.finish(self.endpoint, self.environment)


class GenerationUser(ModelUser):
    """OpenAI completions and chat bodies against the NeuroQ pyfunc, strictly alternating (not drawn at random),
    so even a short run sends both."""

    endpoint = "generation"

    @task
    def generate(self) -> None:
        max_tokens = self.options.max_tokens
        turn = next(self.turn)
        prompt, chat = PROMPTS[turn % len(PROMPTS)], turn % 2 == 1
        if chat:
            body = {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                    "max_tokens": max_tokens}
        else:
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8}
        self.invoke("generation/chat" if chat else "generation/completions", body,
                    lambda answer: check_completion(answer, chat=chat, max_tokens=max_tokens))


class EmbeddingsUser(ModelUser):
    """OpenAI embeddings bodies with --embed-texts documents each, against the Ruri embeddings pyfunc."""

    endpoint = "embeddings"

    @task
    def embeddings(self) -> None:
        n = self.options.embed_texts
        body = {"input": self.pick(TEXTS, n), "input_type": "document"}
        self.invoke("embeddings", body, lambda answer: check_embeddings(answer, n_texts=n))


class RerankUser(ModelUser):
    """A query and --rerank-documents documents inside MLflow's `input` envelope, against the rerank pyfunc."""

    endpoint = "rerank"
    top_n = 3

    @task
    def rerank(self) -> None:
        query, *documents = self.pick(TEXTS, 1 + self.options.rerank_documents)
        body = {"input": {"query": query, "documents": documents, "top_n": self.top_n}}
        self.invoke("rerank", body, lambda answer: check_rerank(answer, n_documents=len(documents), top_n=self.top_n))
