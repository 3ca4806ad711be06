"""bench/locustfile.py run headless, as a subprocess (locust patches the standard library with gevent on
import), against real servers: what the load bench measures is what these tests check."""

from __future__ import annotations

import csv

import pytest

from bench.bench_load import REQUEST_NAMES, run_locust

pytestmark = pytest.mark.slow

# Small requests: the tiny models answer in milliseconds, so a short run still sends many.
SMALL = ["--max-tokens", "8", "--embed-texts", "2", "--rerank-documents", "4"]


def test_every_endpoint_serves_a_bounded_run_without_errors(load_servers, tmp_path):
    per_endpoint = 20
    stats = run_locust(load_servers, 2, tmp_path / "load", seconds=120, max_requests=per_endpoint, options=SMALL)

    assert set(stats) == {name for names in REQUEST_NAMES.values() for name in names}
    for endpoint, names in REQUEST_NAMES.items():
        # The count bound ends the run long before the time bound: each endpoint sent exactly that many.
        assert sum(stats[name].requests for name in names) == per_endpoint, (endpoint, stats)
    for name, row in stats.items():
        assert row.failures == 0, (name, row)
        assert row.rps > 0 and 0 < row.p50 <= row.p95 <= row.p99, (name, row)


def test_a_refused_request_counts_as_a_failure(load_servers, tmp_path):
    """Rerank bodies sent to the embeddings server get its 400: the load test must report them, not pass."""
    stats = run_locust({"rerank": load_servers["embeddings"]}, 1, tmp_path / "wrong", seconds=120, max_requests=3,
                       options=SMALL)

    assert stats["rerank"].requests == stats["rerank"].failures == 3
    with open(tmp_path / "wrong_failures.csv", newline="") as f:
        errors = [row["Error"] for row in csv.DictReader(f)]
    assert errors and all("HTTP 400" in error and "INVALID_PARAMETER_VALUE" in error for error in errors), errors
