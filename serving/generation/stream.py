"""Streaming one completions / chat request out of the batched decoder (``NeuroQGenerationModel.predict_stream``).

The request's job goes to the cross-request batcher like any other, so a stream still shares its decode with
concurrent requests of equal settings; its ``on_step`` hook (neuroq.generate.DecodeStep) hands every step's new
token ids to the request's own thread through a queue, and that thread decodes and yields the text as OpenAI
chunks (responses.py). The hook never blocks the decoder.

Text is sent only once it can no longer change: a trailing U+FFFD may be the first bytes of a character that the
next token completes, and text that could still grow into a stop string would be cut from the final answer. A
row's last chunk (the rest of its text and its finish reason) comes from the decoder's own ``Sample`` when the
batched call ends, so the streamed pieces add up to exactly the answer ``predict`` gives for the same seed.

Closing the generator (a client that went away; the OpenAI front closes it on disconnect) stops the job's rows at
the decoder's next step: they finish "cancelled" and the other requests in the call go on unchanged.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator

from neuroq.generate import DecodeStep, Sample
from serving.generation.responses import ChunkWriter

__all__ = ["TokenStream", "stream_chunks"]

logger = logging.getLogger(__name__)

_DONE = object()


class TokenStream:
    """One streaming job's decoding steps, from the batcher's model thread to the request's thread."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False  # set by the reader's thread when it goes away
        self._stopped = False

    def on_step(self, step: DecodeStep) -> range | None:
        """The job's StepHook (model thread): queue the step, or stop every row once the reader has gone."""
        if not self.cancelled:
            self._queue.put(step)
            return None
        if not self._stopped:
            self._stopped = True
            logger.info("stream reader gone: its %d rows stop decoding after step %d", len(step.tokens),
                        step.index + 1)
        return range(len(step.tokens))

    def on_done(self) -> None:
        self._queue.put(_DONE)

    def steps(self) -> Iterator[list[DecodeStep]]:
        """Every step queued since the last look (at least one), until the job is done."""
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            done = batch[-1] is _DONE
            steps = batch[:-1] if done else batch
            if steps:
                yield steps
            if done:
                return


class _RowText:
    """A row's completion so far, and how much of its text has been sent."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]):
        self._decode = decode
        self._stops = stops
        self.ids: list[int] = []
        self.sent = ""

    def fresh(self) -> str:
        """Text that is final now and not sent yet (and mark it sent)."""
        text = self._decode(self.ids).rstrip("\ufffd")
        text = text[:len(text) - self._possible_stop(text)]
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def _possible_stop(self, text: str) -> int:
        """Length of the longest end of `text` that is the beginning of a stop string."""
        for size in range(min(len(text), max(map(len, self._stops), default=0)), 0, -1):
            if any(stop.startswith(text[-size:]) for stop in self._stops):
                return size
        return 0

    def rest(self, sample: Sample) -> str:
        return sample.text[len(self.sent):]


def stream_chunks(ticket, jobs: list, writer: ChunkWriter, decode: Callable[[list[int]], str]) -> Iterator[dict]:
    """Submit the request's one job through its batcher ticket and yield its answer as chunks."""
    job = jobs[0]
    stream = TokenStream()
    job.on_step = stream.on_step
    rows = [_RowText(decode, job.config.stop) for _ in range(job.rows)]
    pending = ticket.submit(jobs, on_done=stream.on_done)
    try:
        opening = writer.opening(job.rows)
        if opening is not None:
            yield opening
        finished = [False] * job.rows
        for steps in stream.steps():
            for step in steps:
                for r, token in enumerate(step.tokens):
                    if token is not None:
                        rows[r].ids.append(token)
                finished = [bool(reason) for reason in step.finished]
            # A finished row's text may end in a stop string the sample cuts: its rest comes from the sample.
            choices = [writer.choice(r, delta) for r, row in enumerate(rows)
                       if not finished[r] and (delta := row.fresh())]
            if choices:
                yield writer.chunk(choices)
        per_prompt: list[list[Sample]] = pending.result()[0]
        samples = [sample for prompt_samples in per_prompt for sample in prompt_samples]
        yield writer.chunk([writer.choice(r, rows[r].rest(s), s.finish_reason) for r, s in enumerate(samples)])
        if writer.include_usage:
            yield writer.usage(per_prompt)
    finally:
        # Closed early (GeneratorExit) or failed: rows still decoding stop at the next step.
        stream.cancelled = not pending.done.is_set()
