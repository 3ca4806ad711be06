"""PipelineParams: the one typed config every runner builds, from KFP's strings or from the command line."""

from __future__ import annotations

import argparse

import pytest

from components.params import PipelineParams, add_arguments, from_arguments
from neuroq.errors import ConfigError


def test_values_that_kfp_turned_into_strings_come_back_typed():
    params = PipelineParams.from_dict({"max_steps": "50.0", "hf_streaming": "true", "learning_rate": "0.002"})
    assert (params.max_steps, params.hf_streaming, params.learning_rate) == (50, True, 0.002)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"max_step": 5}, "unknown pipeline parameter"),
        ({"max_steps": "5.5"}, "max_steps must be int"),
        ({"data_sources": "bundled,wikipedia"}, "data_sources must be a comma-separated subset"),
        ({"data_sources": "huggingface"}, "hf_path is empty"),
        ({"mode": "quantum"}, "mode must be 'layered', 'brain' or 'gpt'"),
        ({"data_sources": "common_crawl", "cc_crawl_id": "crawl-data/CC-MAIN-2024-10"}, "crawl_id must look like"),
        ({"sample_max_new_tokens": 64, "seq_length": 64}, "must be below seq_length"),
    ],
)
def test_a_bad_knob_fails_before_any_step_runs_and_names_itself(knobs, message):
    with pytest.raises(ConfigError, match=message):
        PipelineParams.from_dict(knobs)


def test_command_line_takes_every_knob_in_both_spellings_and_builds_the_same_configs():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    params = from_arguments(parser.parse_args(["--max_steps", "7", "--batch-size", "4", "--mode", "brain"]))
    assert params == PipelineParams(max_steps=7, batch_size=4, mode="brain")
    train = params.train_config("out", vocab_size=1234)
    assert (train.max_steps, train.batch_size, train.model.mode, train.model.vocab_size) == (7, 4, "brain", 1234)


def test_epochs_replace_max_steps_once_the_number_of_training_blocks_is_known():
    params = PipelineParams(epochs=3, batch_size=16)
    assert params.train_config("out", n_train_blocks=100).max_steps == 3 * 7  # ceil(100 / 16) steps per epoch
    assert params.train_config("out").max_steps == params.max_steps
