"""Model Registry policy: every new version becomes `@challenger`; it takes `@champion` only if it is better.

"Better" means a lower validation bits/char than the current champion *on the same validation text*. Bits per
character do not depend on the tokenizer, so versions with different vocabularies compare fairly, but they do
depend on the text: a champion scored on another split says nothing about this one. Each version therefore
carries its scores per validation set, as tags `bits_per_char.<digest>` (digest = the validation manifest's
content digest). When the champion has no score for the challenger's validation set, it is re-scored on that
text once and the score is cached as a new tag on the champion, so later comparisons on the same data are free.

Aliases move last, and only after the version is READY and its model loaded and generated once: a step that
fails anywhere before that (evaluation, logging, loading, re-scoring) leaves both aliases where they were. They
move together: if `@champion` cannot follow `@challenger`, `@challenger` is put back (docs/faults.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Decision",
    "Evaluation",
    "PromotionError",
    "promote",
    "score_tag",
    "wait_until_ready",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Tag keys hold a digest prefix: 16 hex digits (64 bits) cannot collide by accident between validation sets.
_DIGEST_CHARS = 16


class PromotionError(RuntimeError):
    """The version cannot be promoted (not READY, does not load or generate, champion cannot be scored)."""


@dataclass(frozen=True)
class Evaluation:
    """How the challenger scored: its bits/char on one validation set, plus every metric to tag it with."""

    bits_per_char: float
    validation_digest: str
    metrics: Mapping[str, float]

    def __post_init__(self) -> None:
        if not math.isfinite(self.bits_per_char):
            raise PromotionError(f"bits_per_char must be finite to compare versions, got {self.bits_per_char}")
        if not self.validation_digest:
            raise PromotionError("validation_digest is empty: scores without a named validation set cannot be compared")


@dataclass(frozen=True)
class Decision:
    name: str
    version: str
    promoted: bool
    reason: str
    challenger_bits_per_char: float
    previous_champion: str | None
    champion_bits_per_char: float | None

    @property
    def champion(self) -> str | None:
        """The version `@champion` points at after the decision."""
        return self.version if self.promoted else self.previous_champion


def score_tag(validation_digest: str) -> str:
    return f"bits_per_char.{validation_digest[:_DIGEST_CHARS]}"


def wait_until_ready(client: MlflowClient, name: str, version: str, timeout: float = 300.0) -> ModelVersion:
    """Block until the registry finished copying the version's files; raise if it failed or took too long."""
    deadline = time.monotonic() + timeout
    while True:
        model_version = client.get_model_version(name, version)
        if model_version.status == "READY":
            return model_version
        if model_version.status == "FAILED_REGISTRATION":
            raise PromotionError(f"{name} version {version} failed registration: {model_version.status_message}")
        if time.monotonic() > deadline:
            raise PromotionError(f"{name} version {version} still {model_version.status} after {timeout:.0f}s")
        time.sleep(0.5)


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    evaluation: Evaluation,
    *,
    smoke_test: Callable[[str], object],
    rescore: Callable[[str], float],
    tags: Mapping[str, str] | None = None,
    min_improvement: float = 0.0,
    ready_timeout: float = 300.0,
) -> Decision:
    """Tag `version`, check that it works, then point `@challenger` (and maybe `@champion`) at it.

    `smoke_test(model_uri)` must load the model and generate once, raising on any problem. `rescore(model_uri)`
    returns a model's bits/char on the challenger's validation text; it is only called for a champion that has
    no score on that text yet. The challenger needs a bits/char lower than the champion's by more than
    `min_improvement` (ties keep the incumbent, so retraining on unchanged data does not churn the alias).
    """
    version = str(version)
    wait_until_ready(client, name, version, ready_timeout)
    own_tags = {
        **(tags or {}),
        "validation_digest": evaluation.validation_digest,
        score_tag(evaluation.validation_digest): repr(evaluation.bits_per_char),
        **{f"eval.{key}": repr(float(value)) for key, value in evaluation.metrics.items()},
    }
    for key, value in own_tags.items():
        client.set_model_version_tag(name, version, key, value)

    model_uri = f"models:/{name}/{version}"
    try:
        smoke_test(model_uri)
    except Exception as error:
        raise PromotionError(f"{model_uri} did not load and generate, so no alias moved: {error}") from error

    champion = _current_champion(client, name)
    decision = _decide(client, name, version, evaluation, champion, rescore, min_improvement)

    client.set_model_version_tag(name, version, "promotion", "champion" if decision.promoted else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    _move_aliases(client, name, version, promoted=decision.promoted)
    log.info("%s version %s: %s", name, version, decision.reason)
    return decision


def _move_aliases(client: MlflowClient, name: str, version: str, *, promoted: bool) -> None:
    """Point `@challenger`, and if `promoted` `@champion`, at `version`: both move or, as far as MLflow lets us,
    neither (a failed champion move puts the challenger back; the registry has no transaction to do better)."""
    previous = client.get_registered_model(name).aliases.get(CHALLENGER)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if not promoted:
        return
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except Exception as error:
        try:
            if previous is None:
                client.delete_registered_model_alias(name, CHALLENGER)
            else:
                client.set_registered_model_alias(name, CHALLENGER, previous)
            client.set_model_version_tag(name, version, "promotion", "failed")
        except Exception as undo_error:
            raise PromotionError(
                f"@{CHAMPION} of {name} could not be moved to version {version} ({error}), and @{CHALLENGER}, already "
                f"moved to it, could not be put back to {previous or 'no version'} ({undo_error}): set it by hand"
            ) from error
        raise PromotionError(
            f"@{CHAMPION} of {name} could not be moved to version {version} ({error}); @{CHALLENGER} was put back "
            f"to {previous or 'no version'}, so no alias moved"
        ) from error


def _current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    # Read the alias map rather than catching "alias not found": its error code differs between stores.
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return client.get_model_version(name, version) if version is not None else None


def _decide(
    client: MlflowClient,
    name: str,
    version: str,
    evaluation: Evaluation,
    champion: ModelVersion | None,
    rescore: Callable[[str], float],
    min_improvement: float,
) -> Decision:
    ours = evaluation.bits_per_char

    def decision(promoted: bool, reason: str, champion_bpc: float | None = None) -> Decision:
        previous = champion.version if champion is not None else None
        return Decision(name, version, promoted, reason, ours, previous, champion_bpc)

    if champion is None:
        return decision(True, f"promoted: no champion yet (bits/char {ours:.4f})")
    if str(champion.version) == version:
        return decision(True, f"version {version} is already the champion", ours)

    key = score_tag(evaluation.validation_digest)
    stored = champion.tags.get(key)
    if stored is not None:
        theirs, how = float(stored), "stored score"
    else:
        try:
            theirs = float(rescore(f"models:/{name}/{champion.version}"))
        except Exception as error:
            raise PromotionError(
                f"champion version {champion.version} could not be re-scored on validation set "
                f"{evaluation.validation_digest[:_DIGEST_CHARS]}, so no alias moved: {error}"
            ) from error
        client.set_model_version_tag(name, champion.version, key, repr(theirs))
        how = "re-scored on this validation set"

    where = f"on validation set {evaluation.validation_digest[:_DIGEST_CHARS]}"
    if ours < theirs - min_improvement:
        return decision(
            True,
            f"promoted: bits/char {ours:.4f} beats champion version {champion.version}'s {theirs:.4f} "
            f"({how}) {where}",
            theirs,
        )
    margin = f" by more than {min_improvement}" if min_improvement else ""
    return decision(
        False,
        f"kept champion version {champion.version}: challenger bits/char {ours:.4f} does not beat "
        f"{theirs:.4f} ({how}){margin} {where}",
        theirs,
    )
