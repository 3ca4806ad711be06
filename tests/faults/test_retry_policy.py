"""The retry policy steps put on MLflow: bounded defaults in MLflow's own variables, operators' values win."""

from __future__ import annotations

import os

import mlflow.environment_variables as env
import pytest

from components.steps.tracking import RETRY_ENV, RetryPolicy
from neuroq.errors import ConfigError

# MLflow's own knobs, read by every MLflow HTTP request.
VARIABLES = tuple(variable.name for variable in (
    env.MLFLOW_HTTP_REQUEST_MAX_RETRIES, env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    env.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER, env.MLFLOW_HTTP_REQUEST_TIMEOUT,
))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_unset_variables_get_the_bounded_defaults():
    policy = RetryPolicy.from_env().apply()

    assert tuple(RETRY_ENV.values()) == VARIABLES
    assert (env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), env.MLFLOW_HTTP_REQUEST_TIMEOUT.get()) == (4, 60)
    assert policy == RetryPolicy(max_retries=4, backoff_factor=1, backoff_jitter=1.0, timeout_s=60)
    assert [os.environ[name] for name in VARIABLES] == ["4", "1", "1.0", "60"]
    assert policy.describe().startswith("5 attempts per request, backoff factor 1 s, timeout 60 s")


def test_a_variable_the_operator_set_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.25")

    assert RetryPolicy.from_env() == RetryPolicy(max_retries=7, backoff_jitter=0.25)


@pytest.mark.parametrize(("name", "value"), [("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "11"),
                                             ("MLFLOW_HTTP_REQUEST_TIMEOUT", "0"),
                                             ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "two")])
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=name):
        RetryPolicy.from_env()
