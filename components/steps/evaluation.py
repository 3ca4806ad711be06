"""The last steps: score the trained model on the validation split, then register it and apply the promotion
policy (`serving.promotion`), which moves the `@challenger` / `@champion` aliases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow

from components.params import PipelineParams
from components.steps import tracking
from components.steps.base import RunRef, step_run, text_digest
from components.steps.summary import DESCRIPTION_TAG, SUMMARY_ARTIFACT, pipeline_summary

__all__ = ["SAMPLES_ARTIFACT", "SMOKE_PROMPT", "evaluate", "register"]

SAMPLES_ARTIFACT = "samples/generations.json"


def evaluate(params: PipelineParams, run: RunRef, checkpoint_dir: str, val_dir: str) -> dict[str, Any]:
    """Score the validation text (loss, perplexity, bits/char), generate samples, and log both.

    Returns the metrics plus `validation_digest`, the identity of the text the scores are about.
    """
    from neuroq.checkpoint import load_checkpoint
    from neuroq.data import read_texts
    from neuroq.evaluate import generation_stats, score_text
    from neuroq.generate import generate
    from neuroq.tokenizer import NeuroQTokenizer

    with step_run(run, params, "evaluate", weights=checkpoint_dir):
        loaded = load_checkpoint(checkpoint_dir)
        texts = list(read_texts(val_dir))
        digest = text_digest(texts)
        scores = score_text(loaded.model, loaded.tokenizer, texts)
        prompts = [NeuroQTokenizer.format_chat([(prompt, None)]) for prompt in params.prompts]
        samples = [group[0] for group in generate(loaded.model, loaded.tokenizer, prompts, params.generation_config())]
        stats = generation_stats([sample.token_ids for sample in samples], loaded.tokenizer)
        metrics = {
            "val_loss": scores["loss"],
            "val_perplexity": scores["perplexity"],
            "val_bits_per_char": scores["bits_per_char"],
            **{f"sample_{key}": value for key, value in stats.items()},
        }
        mlflow.log_metrics(metrics)
        mlflow.log_params(
            {"validation_digest": digest, "validation_docs": len(texts), "validation_chars": scores["n_chars"]}
        )
        mlflow.log_dict(
            [
                {"prompt": prompt, "completion": sample.text, "finish_reason": sample.finish_reason}
                for prompt, sample in zip(params.prompts, samples, strict=True)
            ],
            SAMPLES_ARTIFACT,
        )
        return {**metrics, "validation_digest": digest}


SMOKE_PROMPT = "こんにちは"


def register(
    params: PipelineParams,
    run: RunRef,
    checkpoint_dir: str,
    val_dir: str,
    *,
    evaluation: Mapping[str, Any],
    train_digest: str,
) -> Any:
    """Log the checkpoint as the NeuroQ pyfunc, register it, apply the promotion policy, close the parent run.

    The decision and its reason are tags of this step's run and of the parent run, and a log line.
    """
    from mlflow.tracking import MlflowClient

    from serving.generation.log import log_neuroq_model
    from serving.promotion import Evaluation, promote

    name = params.registered_model_name
    with step_run(run, params, "register", weights=checkpoint_dir) as active:
        info = log_neuroq_model(
            checkpoint_dir,
            registered_model_name=name,
            metadata={"validation_digest": evaluation["validation_digest"], "data_digest": train_digest},
        )
        client = MlflowClient(run.tracking_uri)
        decision = promote(
            client,
            name,
            str(info.registered_model_version),
            Evaluation(
                bits_per_char=float(evaluation["val_bits_per_char"]),
                validation_digest=str(evaluation["validation_digest"]),
                metrics={k: float(v) for k, v in evaluation.items() if k.startswith("val_")},
            ),
            smoke_test=_load_and_generate,
            rescore=lambda model_uri: _bits_per_char(model_uri, val_dir),
            tags={
                "data_digest": train_digest,
                "code_version": tracking.code_version(),
                "pipeline_run_id": run.parent_run_id or active.info.run_id,
                "mode": params.mode,
            },
            min_improvement=params.min_improvement,
        )
        outcome = {
            "promotion.decision": "promoted" if decision.promoted else "kept_champion",
            "promotion.reason": decision.reason,
            "registered_model": f"{name}/{decision.version}",
            "champion_version": str(decision.champion),
        }
        mlflow.set_tags(outcome)
        if run.parent_run_id:
            tracking.log_on_parent(run.tracking_uri, run.parent_run_id,
                                   {key: float(evaluation[key]) for key in ("val_bits_per_char", "val_loss",
                                                                             "val_perplexity")}, outcome)
            text = pipeline_summary(client, run.parent_run_id, params, decision=decision,
                                    tracking_uri=run.tracking_uri)
            client.log_text(run.parent_run_id, text, SUMMARY_ARTIFACT)
            client.set_tag(run.parent_run_id, DESCRIPTION_TAG, text)
            tracking.finish_pipeline_run(run.tracking_uri, run.parent_run_id)
    return decision


def _load_and_generate(model_uri: str) -> None:
    """Load a registered version the way serving does and generate one completion; raise on any problem."""
    model = mlflow.pyfunc.load_model(model_uri)
    answer = model.predict({"prompt": SMOKE_PROMPT, "max_tokens": 8, "seed": 0})
    choices = answer.get("choices") if isinstance(answer, Mapping) else None
    if not choices or not isinstance(choices[0].get("text"), str):
        raise RuntimeError(f"{model_uri} answered a completion request with {answer!r}")


def _bits_per_char(model_uri: str, val_dir: str) -> float:
    """Bits/char of a registered NeuroQ version on the validation text in `val_dir`."""
    from neuroq.data import read_texts
    from neuroq.evaluate import score_text

    served = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return score_text(served.model, served.tokenizer, list(read_texts(val_dir)))["bits_per_char"]
