"""The OpenAI completions and chat answers of the generation pyfunc, whole (``predict``) or as the chunks of a
stream (``predict_stream``), built from the same pieces so both say the same thing.

Whole: ``{"id", "object": "text_completion" | "chat.completion", "created", "model", "choices", "usage"}``, choice
``i * n + j`` being sample j of prompt i. Streamed: chunks ``{"id", "object": "text_completion" |
"chat.completion.chunk", "created", "model", "choices": [...]}`` where a chat choice carries ``delta``
(``{"role": "assistant", "content": ""}`` first, then ``{"content": ...}``) and a completion choice ``text``; the
last chunk of a choice has its ``finish_reason``. With ``stream_options.include_usage`` every chunk has
``"usage": null`` but a final one with no choices and the usage, as OpenAI's streams do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from neuroq.generate import Sample
from serving.generation.requests import TextRequest

__all__ = ["ChunkWriter", "completion"]


def completion(request: TextRequest, per_prompt: list[list[Sample]], model: str) -> dict:
    """The whole answer: one choice per sample, with its text and finish reason."""
    chat = request.kind == "chat"
    choices = []
    for i, samples in enumerate(per_prompt):
        for j, sample in enumerate(samples):
            choice: dict[str, Any] = {"index": i * request.config.n + j}
            if chat:
                choice["message"] = {"role": "assistant", "content": sample.text}
            else:
                choice.update(text=sample.text, logprobs=None)
            choice["finish_reason"] = sample.finish_reason
            choices.append(choice)
    return {**_head(chat, "chat.completion"), "model": model, "choices": choices, "usage": _usage(per_prompt)}


class ChunkWriter:
    """The chunks of one streamed answer: they share its id and creation time."""

    def __init__(self, request: TextRequest, model: str):
        self.chat = request.kind == "chat"
        self.include_usage = request.include_usage
        self._head = {**_head(self.chat, "chat.completion.chunk"), "model": model}

    def chunk(self, choices: list[dict]) -> dict:
        chunk = {**self._head, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def opening(self, rows: int) -> dict | None:
        """A chat stream starts by naming the speaker of every choice; a completion stream has no such chunk."""
        if not self.chat:
            return None
        return self.chunk([{"index": r, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None} for r in range(rows)])

    def choice(self, row: int, text: str, finish_reason: str | None = None) -> dict:
        if self.chat:
            return {"index": row, "delta": {"content": text} if text else {}, "logprobs": None,
                    "finish_reason": finish_reason}
        return {"index": row, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def usage(self, per_prompt: list[list[Sample]]) -> dict:
        return {**self._head, "choices": [], "usage": _usage(per_prompt)}


def _head(chat: bool, chat_object: str) -> dict:
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": chat_object if chat else "text_completion",
        "created": int(time.time()),
    }


def _usage(per_prompt: list[list[Sample]]) -> dict:
    prompt_tokens = sum(samples[0].prompt_tokens for samples in per_prompt)
    completion_tokens = sum(s.completion_tokens for samples in per_prompt for s in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
