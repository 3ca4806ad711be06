"""Errors in OpenAI's shape, so the SDKs raise their own exception types (400 BadRequestError with ``param``,
401 AuthenticationError, 404 NotFoundError, 413, 422 UnprocessableEntityError, 500 InternalServerError).

    {"error": {"message": "max_tokens: must be at most 256, got 1000", "type": "invalid_request_error",
               "param": "max_tokens", "code": null}}

The models' refusals are ``RequestError``s (an MlflowException with ``field``, the JSON path of the bad value);
the front maps them by that attribute rather than by class, so a model carrying an older copy of the serving
code maps the same way.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException

__all__ = ["OpenAIError", "from_model_error"]


class OpenAIError(Exception):
    """An HTTP error answer; ``body()`` is what the client receives."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.error = {"message": message, "type": type, "param": param, "code": code}

    def body(self) -> dict:
        return {"error": self.error}


def from_model_error(error: MlflowException, status: int = 400) -> OpenAIError:
    """A model's refusal (RequestError: 400 naming its field), or another MlflowException of the pyfunc wrapper."""
    return OpenAIError(status, error.message, param=getattr(error, "field", None))
