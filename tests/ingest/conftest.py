"""Fixtures for the ingest tests: one SeaweedFS server per session holding a fake Common Crawl crawl."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from neuroq.ingest import CommonCrawlConfig
from tests.ingest.fake_crawl import CRAWL_ID, crawl_objects, wide_crawl_objects
from tests.support.s3server import SeaweedS3


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3(public_read_buckets=("commoncrawl",), buckets=("private",)) as server:
        yield server


@pytest.fixture(scope="session")
def fake_crawl(s3_server: SeaweedS3) -> dict[str, bytes]:
    """The uploaded objects of bucket ``commoncrawl``, key -> bytes."""
    objects = {**crawl_objects(), **wide_crawl_objects()}
    client = s3_server.client()
    for key, data in objects.items():
        client.put_object(Bucket="commoncrawl", Key=key, Body=data)
    return objects


@pytest.fixture
def crawl_config(s3_server: SeaweedS3, fake_crawl: dict[str, bytes]) -> CommonCrawlConfig:
    """Reads the fake crawl the way production reads the real one: anonymous, only the endpoint differs."""
    return CommonCrawlConfig(crawl_id=CRAWL_ID, endpoint_url=s3_server.endpoint_url, max_records=None,
                             max_attempts=1, connect_timeout=2, read_timeout=10)
