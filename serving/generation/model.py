"""The NeuroQ generation pyfunc: a request's prompts (times n) run in one batched generate call.

Prompts are left-padded and share a KV cache. The cross-request batcher (base/batcher.py) also merges concurrent
requests whose sampling settings are equal into that call (how many is bounded by the scoring server, which runs
at most min(32, CPUs + 4) requests at once per worker); a request with a seed always runs on its own, since
sampled tokens depend on the batch they are drawn in. ``health``, ``status`` and ``clear_session`` generate
nothing and never wait behind requests that do. ``predict_stream`` answers completions and chat bodies as OpenAI
stream chunks while the batched decoder runs (stream.py): ``mlflow.pyfunc`` users stream in-process, and the OpenAI
front (``python -m serving openai``) streams them as server-sent events.

Serve the registered champion (the model's code travels inside it, log.py):

    export MLFLOW_TRACKING_URI=...  NEUROQ_SERVING_MODEL_URI=models:/neuroq@champion
    mlflow models serve -m "$NEUROQ_SERVING_MODEL_URI" --env-manager local -w 4
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from neuroq.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, load_checkpoint
from neuroq.errors import CheckpointError
from neuroq.generate import DecodeStep, GenerationConfig, Sample, StepHook, generate_ids
from neuroq.tokenizer import NeuroQTokenizer
from serving.base.integrity import logged_model_dir
from serving.base.model import ServingModel
from serving.base.request import RequestError, plain
from serving.base.served import resolve_served_model
from serving.base.settings import BatchConfig, pick_device
from serving.generation import responses
from serving.generation.legacy import LegacyAction, LegacyGenerate
from serving.generation.requests import RequestParser, TextRequest
from serving.generation.sessions import SessionStore
from serving.generation.settings import GenerationSettings
from serving.generation.stream import stream_chunks

__all__ = ["ARTIFACT_FILES", "GenerationJob", "NeuroQGenerationModel"]

logger = logging.getLogger(__name__)

# pyfunc artifact name -> checkpoint file; all three land side by side in the model's artifacts/ folder, which
# is therefore a checkpoint directory load_checkpoint reads as is.
ARTIFACT_FILES = {"weights": WEIGHTS_FILE, "config": CONFIG_FILE, "tokenizer": TOKENIZER_FILE}


@dataclass
class GenerationJob:
    """One request's generation work: every row (prompt x n) of it runs in the same batched call.

    ``on_step`` streams this job's tokens (neuroq.generate.StepHook, with the job's own row numbers: row
    ``i * n + j`` is sample j of prompt i, the OpenAI choice index) while the batcher may decode other requests'
    rows in the same call; the rows it returns stop ("cancelled"), the other jobs' rows go on.
    """

    prompt_ids: list[list[int]]
    config: GenerationConfig
    history_turns: int = 0
    on_step: StepHook | None = None

    @property
    def rows(self) -> int:
        return len(self.prompt_ids) * self.config.n

    def __len__(self) -> int:
        # The batcher sorts and budgets work items by length; a job costs about rows x its longest prompt.
        return self.rows * max(map(len, self.prompt_ids))


class NeuroQGenerationModel(ServingModel):
    """The NeuroQ pyfunc: artifacts ``weights``, ``config``, ``tokenizer`` (a checkpoint) and their digests."""

    def load(self, context) -> None:
        # ServingModel.load_context has checked every artifact against the digests recorded at logging, when
        # log_neuroq_model had verified the same bytes against config.json: hashing them again here would only
        # double the start-up time.
        model_dir = logged_model_dir(context)
        logged = (mlflow.models.Model.load(str(model_dir)).metadata or {}).get("neuroq") or {}
        paths = {key: Path(context.artifacts[key]) for key in ARTIFACT_FILES if key in context.artifacts}
        checkpoint_dirs = {path.parent for path in paths.values()}
        if len(checkpoint_dirs) != 1:
            raise CheckpointError(f"the checkpoint files of {model_dir} are not in one folder: "
                                  f"{sorted(map(str, checkpoint_dirs))}")
        self.device = pick_device()
        loaded = load_checkpoint(checkpoint_dirs.pop(), device=self.device, verify_digests=False)
        self.model, self.tokenizer, self.model_config = loaded.model, loaded.tokenizer, loaded.config
        self.settings = GenerationSettings.from_env()
        self.max_rows_per_call = BatchConfig.from_env().batch_size
        self.served = resolve_served_model(self.settings.model_uri, logged.get("registered_model_name") or "neuroq")
        self.sessions = SessionStore(
            self.settings.session_dir,
            max_turns=self.settings.session_max_turns,
            max_tokens=self.settings.session_max_tokens,
            ttl_seconds=self.settings.session_ttl_s,
        )
        self.parser = RequestParser(self.limits, self.settings, self.model_config.max_seq_len,
                                    self.model_config.mode, self.served.name)
        logger.info("NeuroQ %s model (%s parameters) on %s serving as %s", self.model_config.mode,
                    f"{self.model.num_params(non_embedding=False):,}", self.device, self.served)

    def parse(self, body, *, streaming: bool = False):
        return self.parser.parse(body, streaming=streaming)

    def predict_stream(self, context, model_input, params=None) -> Iterator[dict]:
        """A completions or chat body answered as OpenAI stream chunks, yielded as the batched decoder makes the
        tokens (stream.py); closing the iterator stops the request's decoding. Bad bodies raise RequestError
        before the first chunk."""
        with self.batcher.reserve() as ticket:
            request = self.parse(plain(model_input), streaming=True)
            if not isinstance(request, TextRequest) or request.kind == "batch":
                raise RequestError("request", "predict_stream streams a completions (prompt) or chat (messages) body")
            jobs = self.prepare(request)
            yield from stream_chunks(ticket, jobs, responses.ChunkWriter(request, self.served.name),
                                     self.tokenizer.decode)

    def prepare(self, request) -> list[GenerationJob]:
        if isinstance(request, LegacyAction):
            return []
        if isinstance(request, LegacyGenerate):
            history = self.sessions.history(request.session_id) if request.session_id else []
            # Messages rather than (user, assistant) pairs: an empty earlier answer is a valid turn here.
            messages = [{"role": role, "content": content} for turn in history
                        for role, content in (("user", turn.user), ("assistant", turn.assistant))]
            messages.append({"role": "user", "content": request.prompt})
            prompt_ids = self._encode([NeuroQTokenizer.format_chat(messages)], "input.prompt", request.config)
            return [GenerationJob(prompt_ids, request.config, history_turns=len(history))]
        return [GenerationJob(self._encode(request.prompts, request.field, request.config), request.config)]

    def _encode(self, texts: list[str], name: str, config: GenerationConfig) -> list[list[int]]:
        # bos first, as generate() and training do; the length check mirrors generate_ids' own budget.
        ids = self.tokenizer.encode_batch(texts, add_bos=True)
        budget = self.model_config.max_seq_len - config.max_new_tokens
        if config.truncation == "error":
            for i, row in enumerate(ids):
                if len(row) > budget:
                    where = name if len(ids) == 1 else f"{name}[{i}]"
                    raise RequestError(where, f"is {len(row)} tokens, but with {config.max_new_tokens} new tokens "
                                              f"only {budget} fit in the model's {self.model_config.max_seq_len}-"
                                              "token context: shorten it, ask for fewer tokens, or drop "
                                              "\"truncate\": false to cut it from the left")
        return ids

    def run_batch(self, jobs: list[GenerationJob]) -> list[list[list[Sample]]]:
        results: list[list[list[Sample]] | None] = [None] * len(jobs)
        for group in self._merge(jobs):
            rows = [ids for j in group for ids in jobs[j].prompt_ids]
            samples = generate_ids(self.model, rows, jobs[group[0]].config, decode=self.tokenizer.decode,
                                   on_step=_split_hooks([jobs[j] for j in group]))
            start = 0
            for j in group:
                results[j] = samples[start:start + len(jobs[j].prompt_ids)]
                start += len(jobs[j].prompt_ids)
        return results

    def _merge(self, jobs: list[GenerationJob]) -> list[list[int]]:
        """Jobs that can share one generate call: equal settings, no seed, at most BATCH_SIZE rows together."""
        groups: list[list[int]] = []
        for j, job in enumerate(jobs):
            if job.config.seed is None:
                for group in groups:
                    head = jobs[group[0]]
                    if head.config == job.config and sum(jobs[g].rows for g in group) + job.rows \
                            <= self.max_rows_per_call:
                        group.append(j)
                        break
                else:
                    groups.append([j])
            else:
                groups.append([j])
        return groups

    def respond(self, request, jobs: list[GenerationJob], outputs: list) -> Any:
        if isinstance(request, LegacyAction):
            return self._legacy_action(request)
        per_prompt: list[list[Sample]] = outputs[0]
        if isinstance(request, LegacyGenerate):
            sample = per_prompt[0][0]
            if request.session_id:
                tokens = len(self.tokenizer.encode(request.prompt)) + sample.completion_tokens
                self.sessions.append(request.session_id, request.prompt, sample.text, tokens)
            return {
                "status": "success",
                "prompt": request.prompt,
                "generated": sample.text,
                "session_id": request.session_id,
                "finish_reason": sample.finish_reason,
                "history_turns": jobs[0].history_turns,
                "worker_pid": os.getpid(),
            }
        if request.kind == "batch":
            return [samples[0].text for samples in per_prompt]
        return responses.completion(request, per_prompt, self.served.name)

    def _legacy_action(self, request: LegacyAction) -> dict:
        if request.action == "health":
            return {"status": "healthy", "model_loaded": True}
        if request.action == "clear_session":
            cleared = self.sessions.clear(request.session_id)
            return {"status": "success", "session_id": request.session_id, "cleared_turns": cleared}
        return {
            "status": "ready",
            "model_name": self.served.name,
            "model_version": self.served.version,
            "model_alias": self.served.alias,
            "model_uri": self.served.uri,
            "device": str(self.device),
            "mode": self.model_config.mode,
            "vocab_size": self.tokenizer.vocab_size,
            "max_seq_len": self.model_config.max_seq_len,
            "parameters": self.model.num_params(non_embedding=False),
            "worker_pid": os.getpid(),
        }


def _split_hooks(group: list[GenerationJob]) -> Callable[[DecodeStep], list[int]] | None:
    """One hook for a merged call: each job's hook sees its own rows, and the rows it stops map back."""
    if all(job.on_step is None for job in group):
        return None
    spans, start = [], 0
    for job in group:
        spans.append((job, start))
        start += job.rows

    def on_step(step: DecodeStep) -> list[int]:
        stopped = []
        for job, first in spans:
            if job.on_step is not None:
                end = first + job.rows
                own = DecodeStep(step.index, step.tokens[first:end], step.finished[first:end])
                stopped.extend(first + r for r in job.on_step(own) or ())
        return stopped

    return on_step
