"""Three real `mlflow models serve` processes on tiny models (generation, embeddings, rerank) for the load tests.

The model builders and registrations are the serving areas' own fixtures, imported here so these tests use the
same tiny models, not copies. Each imported session fixture runs once more for this folder (pytest keys a
fixture by the conftest that offers it), which costs a few seconds of model building, not another server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serving.conftest import (  # noqa: F401  (fixtures)
    registered_embed,
    registered_rerank,
    store,
    tiny_bi_encoder_dir,
    tiny_cross_encoder_dir,
)
from tests.serving_generation.conftest import CHAMPION_URI, checkpoint_dir, registry, server_env  # noqa: F401
from tests.support.mlflow_serve import ModelServer, serve_all


@pytest.fixture(scope="session")
def load_servers(store, registered_embed, registered_rerank, registry, tmp_path_factory) -> Iterator[dict[str, str]]:
    """endpoint -> base URL, as bench/locustfile.py names them; one worker and one torch thread each (two cores)."""
    workdir = tmp_path_factory.mktemp("load-servers")
    one_thread = {"OMP_NUM_THREADS": "1"}
    servers = {
        "generation": ModelServer(CHAMPION_URI, registry.tracking_uri, env=server_env(workdir / "sessions"),
                                  log_dir=workdir),
        "embeddings": ModelServer(f"models:/{registered_embed.name}@champion", store.tracking_uri, env=one_thread,
                                  log_dir=workdir),
        "rerank": ModelServer(f"models:/{registered_rerank.name}@champion", store.tracking_uri, env=one_thread,
                              log_dir=workdir),
    }
    with serve_all(servers, startup_timeout=300) as urls:
        yield urls
