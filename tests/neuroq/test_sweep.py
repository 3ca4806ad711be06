"""neuroq.sweep without training: the data split by a group field (Aozora's author, so validation authors are
unseen), and the study a sweep continues."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from neuroq.sweep import (
    KNOBS,
    SweepConfig,
    baseline_settings,
    create_study,
    held_out_groups,
    prepare_data,
    recipe_from,
    suggest,
    train_config,
)
from neuroq.train import TrainConfig

TEXT = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"


def _write(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def test_authors_are_held_out_whole_until_they_hold_the_validation_share_of_the_characters() -> None:
    # Authors of very different sizes, as in Aozora: counting authors instead of characters would miss the share.
    records = [(f"author-{a}", TEXT * (1 + 10 * (a % 2))) for a in range(20) for _ in range(3)]
    cfg = SweepConfig(val_fraction=0.2)
    held = held_out_groups(records, cfg)
    val_chars = sum(len(text) for group, text in records if group in held)
    total = sum(len(text) for _, text in records)
    largest_author = 3 * len(TEXT) * 11
    assert 0.2 * total <= val_chars < 0.2 * total + largest_author
    assert held == held_out_groups(list(reversed(records)), cfg)  # by name, not by position
    assert held != held_out_groups(records, SweepConfig(val_fraction=0.2, seed=1))


def test_the_prepared_data_is_reused_by_a_second_sweep_on_the_same_corpus(tmp_path: Path) -> None:
    records = [{"author": f"a{a}", "text": f"{a}-{i} " + TEXT * 3} for a in range(8) for i in range(4)]
    corpus = _write(tmp_path / "c.jsonl.gz", records)
    cfg = SweepConfig(corpus=str(corpus), out_dir=str(tmp_path / "sweep"), vocab_size=300, context=16, val_chars=0,
                      val_fraction=0.25)
    first = prepare_data(cfg)
    second = prepare_data(cfg)
    assert second.val_blocks.shard_dir == first.val_blocks.shard_dir
    assert first.train_groups + first.val_groups == 8 and first.val_groups == 2
    assert first.val_blocks.n_chars == sum(len(r["text"]) for r in records if r["author"] in
                                           held_out_groups([(r["author"], r["text"]) for r in records], cfg))


@pytest.mark.needs_shared_data
def test_aozoras_validation_authors_write_none_of_the_training_text(aozora_path: Path) -> None:
    records = [(r["author"], r["text"]) for r in map(json.loads, gzip.open(aozora_path, "rt", encoding="utf-8"))]
    held = held_out_groups(records, SweepConfig())
    assert 1 <= len(held) < len({author for author, _ in records})
    val_chars = sum(len(text) for author, text in records if author in held)
    assert val_chars >= 0.1 * sum(len(text) for _, text in records)


def test_a_continued_study_draws_new_settings(tmp_path: Path) -> None:
    cfg = SweepConfig(out_dir=str(tmp_path), baseline=False)
    first = create_study(cfg)
    trial = first.ask()
    drawn = suggest(trial)
    first.tell(trial, 5.0)
    again = create_study(cfg).ask()
    assert suggest(again) != drawn


def test_the_model_options_are_knobs_at_their_defaults_in_the_baseline_and_reach_the_trials_model_and_recipe(
        ) -> None:
    cfg = SweepConfig()
    baseline = baseline_settings(cfg)
    assert set(baseline) == set(KNOBS)
    default = train_config(cfg, baseline, 500, "unused")
    assert (default.model.position, default.model.norm, default.model.tie_embeddings,
            default.model.zero_init_residual, default.model.logit_softcap, default.z_loss) == (
        "rope", "layernorm", False, False, 0.0, 0.0)
    changed = {**baseline, "position": "learned", "norm": "rmsnorm", "tie_embeddings": True,
               "zero_init_residual": True, "z_loss": 1e-4, "logit_softcap": 30.0}
    config = train_config(cfg, changed, 500, "unused")
    assert (config.model.position, config.model.norm, config.model.tie_embeddings, config.model.zero_init_residual,
            config.model.logit_softcap, config.z_loss) == ("learned", "rmsnorm", True, True, 30.0, 1e-4)
    recipe = recipe_from(cfg, "on", config)
    assert recipe.train["z_loss"] == 1e-4
    applied = recipe.apply(TrainConfig())
    assert (applied.model.position, applied.model.norm, applied.model.tie_embeddings,
            applied.model.zero_init_residual, applied.model.logit_softcap, applied.z_loss) == (
        "learned", "rmsnorm", True, True, 30.0, 1e-4)
    assert applied.model.n_embd == TrainConfig().model.n_embd  # options, not the size
