"""Throughput and latency of NeuroQ generation behind a real `mlflow models serve` on loopback.

    PATH=.venv/bin:$PATH .venv/bin/python bench/bench_serve_generate.py            # a throwaway model
    MLFLOW_TRACKING_URI=... .venv/bin/python bench/bench_serve_generate.py --model-uri models:/neuroq@champion

Without --model-uri it builds an untrained model of --preset (the spec's default "layered" size) with a
tokenizer trained on the bundled corpus, and registers it in a temporary sqlite store: speed does not depend on
the weights, and an untrained model almost never samples eos, so every completion runs the full max_tokens.

Two tables (markdown):
  1. closed-loop clients, each sending one single-prompt completion after another, at 1, 4 and 16 concurrent
     clients, each level bounded by --seconds and --requests: requests/s, p50/p95 latency, completion tokens/s;
  2. 16 prompts as one request vs 16 requests one after another vs 16 requests at once (the server's batcher
     may merge the concurrent ones): completion tokens/s, median of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

# The server fixture lives with the tests; the benchmark starts the same `mlflow models serve`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.mlflow_serve import ModelServer  # noqa: E402


def build_model(workdir: Path, preset: str) -> tuple[str, str]:
    """Register an untrained `preset` model as bench-neuroq@champion in a sqlite store; (model URI, tracking URI)."""
    import mlflow
    import torch

    from neuroq.checkpoint import save_checkpoint
    from neuroq.corpus import bundled_dialogues
    from neuroq.model import NeuroQ, NeuroQConfig
    from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
    from serving.generation.log import log_neuroq_model

    tokenizer = NeuroQTokenizer.train(bundled_dialogues(), TokenizerConfig(vocab_size=8000, hard_vocab_limit=False))
    torch.manual_seed(0)
    model = NeuroQ(NeuroQConfig.preset(preset, vocab_size=tokenizer.vocab_size, dropout=0.0))
    checkpoint = save_checkpoint(workdir / "checkpoint", model, tokenizer)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("bench", artifact_location=str(workdir / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        info = log_neuroq_model(checkpoint, registered_model_name="bench-neuroq")
    mlflow.MlflowClient().set_registered_model_alias("bench-neuroq", "champion", info.registered_model_version)
    return "models:/bench-neuroq@champion", tracking_uri


def completion(session: requests.Session, url: str, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    """One request; returns (seconds, completion tokens)."""
    started = time.perf_counter()
    response = session.post(url, json={"prompt": prompts, "max_tokens": max_tokens}, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()["usage"]["completion_tokens"]


def closed_loop(url: str, clients: int, seconds: float, max_requests: int, max_tokens: int) -> dict[str, float]:
    latencies: list[float] = []
    tokens = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        nonlocal tokens
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                with lock:
                    if len(latencies) >= max_requests:
                        return
                elapsed, n = completion(session, url, [f"質問{index}: こんにちは"], max_tokens)
                with lock:
                    latencies.append(elapsed)
                    tokens += n

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50": latencies[len(latencies) // 2],
        "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "tokens_per_s": tokens / wall,
    }


def batch_vs_separate(url: str, n_prompts: int, max_tokens: int, repeats: int) -> dict[str, float]:
    prompts = [f"質問{i}: 今日の天気は?" for i in range(n_prompts)]
    sessions = [requests.Session() for _ in prompts]

    def one_request() -> tuple[float, int]:
        return completion(sessions[0], url, prompts, max_tokens)

    def sequential() -> tuple[float, int]:
        started = time.perf_counter()
        tokens = sum(completion(sessions[0], url, [p], max_tokens)[1] for p in prompts)
        return time.perf_counter() - started, tokens

    def concurrent() -> tuple[float, int]:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda i: completion(sessions[i], url, [prompts[i]], max_tokens),
                                    range(len(prompts))))
        return time.perf_counter() - started, sum(n for _, n in results)

    rates = {}
    for name, run in ((f"{n_prompts} prompts in one request", one_request),
                      (f"{n_prompts} requests, one after another", sequential),
                      (f"{n_prompts} requests at once", concurrent)):
        run()  # warm-up
        runs = [run() for _ in range(repeats)]
        rates[name] = statistics.median(tokens / seconds for seconds, tokens in runs)
    for session in sessions:
        session.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="serve this model (MLFLOW_TRACKING_URI must point at its registry)")
    parser.add_argument("--preset", default="layered", help="size of the throwaway model (NeuroQConfig presets)")
    parser.add_argument("--workers", type=int, default=1, help="mlflow models serve -w")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per concurrency level")
    parser.add_argument("--requests", type=int, default=200, help="request bound per concurrency level")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-generate-") as tmp:
        workdir = Path(tmp)
        if args.model_uri:
            model_uri, tracking_uri = args.model_uri, os.environ["MLFLOW_TRACKING_URI"]
        else:
            model_uri, tracking_uri = build_model(workdir, args.preset)
        server = ModelServer(model_uri, tracking_uri, workers=args.workers, log_dir=workdir, request_timeout=600,
                             env={"NEUROQ_SERVING_SESSION_DIR": str(workdir / "sessions")})
        server.start()
        try:
            url = f"{server.wait_ready()}/invocations"
            status = requests.post(url, json={"input": {"action": "status"}}, timeout=60).json()
            print(f"model {model_uri}: {status['mode']}, {status['parameters']:,} parameters, context "
                  f"{status['max_seq_len']}, on {status['device']}; {args.workers} worker(s), {os.cpu_count()} CPUs, "
                  f"max_tokens {args.max_tokens}\n")
            print("| clients | requests | requests/s | p50 latency (s) | p95 latency (s) | completion tokens/s |")
            print("|---:|---:|---:|---:|---:|---:|")
            for clients in (1, 4, 16):
                row = closed_loop(url, clients, args.seconds, args.requests, args.max_tokens)
                print(f"| {row['clients']} | {row['requests']} | {row['rps']:.2f} | {row['p50']:.3f} | "
                      f"{row['p95']:.3f} | {row['tokens_per_s']:.1f} |", flush=True)
            print("\n| 16 prompts | completion tokens/s |")
            print("|---|---:|")
            for name, rate in batch_vs_separate(url, 16, args.max_tokens, args.repeats).items():
                print(f"| {name} | {rate:.1f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
