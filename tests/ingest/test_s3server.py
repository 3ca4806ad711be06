"""The SeaweedFS helper other test areas reuse: public-read buckets, signed full access, env for subprocesses."""

from __future__ import annotations

import subprocess
import sys

import pytest
from botocore.exceptions import ClientError


def test_public_bucket_is_readable_without_credentials_but_not_writable(s3_server):
    s3_server.client().put_object(Bucket="commoncrawl", Key="probe/public.txt", Body=b"hello")
    anonymous = s3_server.anonymous_client()
    assert anonymous.get_object(Bucket="commoncrawl", Key="probe/public.txt")["Body"].read() == b"hello"
    with pytest.raises(ClientError, match="AccessDenied"):
        anonymous.put_object(Bucket="commoncrawl", Key="probe/other.txt", Body=b"x")


def test_other_buckets_need_the_access_key(s3_server):
    s3_server.client().put_object(Bucket="private", Key="probe/secret.txt", Body=b"secret")
    with pytest.raises(ClientError, match="AccessDenied"):
        s3_server.anonymous_client().get_object(Bucket="private", Key="probe/secret.txt")


def test_env_points_boto3_in_a_subprocess_at_the_server(s3_server):
    s3_server.client().put_object(Bucket="private", Key="probe/env.txt", Body=b"from env")
    code = ("import boto3; "
            "print(boto3.client('s3').get_object(Bucket='private', Key='probe/env.txt')['Body'].read().decode())")
    done = subprocess.run([sys.executable, "-c", code], env={**s3_server.env(), "PATH": ""}, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "from env", done.stderr


def test_a_restart_keeps_the_endpoint_and_every_object_and_a_plain_stop_throws_the_data_away():
    from tests.support.s3server import SeaweedS3

    with SeaweedS3(buckets=("kept",)) as s3:
        body = bytes(range(256)) * 4096  # 1 MiB, so the object lives in a volume, not inline in the filer
        s3.client().put_object(Bucket="kept", Key="model/weights.bin", Body=body)
        endpoint, data_dir = s3.endpoint_url, s3.data_dir

        s3.restart()

        assert s3.endpoint_url == endpoint
        assert s3.client().get_object(Bucket="kept", Key="model/weights.bin")["Body"].read() == body
    assert data_dir is not None and not data_dir.exists()
