"""Helpers shared by the serving tests (the fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import requests

# The tiny bi-encoder holds this many tokens per input, so truncation is easy to provoke.
MAX_SEQ_LENGTH = 16


def invoke(url: str, body) -> requests.Response:
    return requests.post(f"{url}/invocations", json=body, timeout=60)


def assert_bad_request(response: requests.Response, field: str) -> str:
    """400 with mlflow's INVALID_PARAMETER_VALUE and our message, which starts with the field."""
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["error_code"] == "INVALID_PARAMETER_VALUE", payload
    message = payload["message"].split("Error: ", 1)[-1]
    assert message.startswith(f"{field}: "), message
    return message


# What a clone without `git lfs pull` holds instead of a large file.
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 58123456\n"
)


def flip_a_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:size])
