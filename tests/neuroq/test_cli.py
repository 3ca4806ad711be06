"""`python -m neuroq`: flags come from the config dataclasses, errors name the flag, and each subcommand works."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuroq.__main__ import build_parser, main
from neuroq.checkpoint import load_checkpoint, save_checkpoint
from neuroq.cli import run_command
from neuroq.corpus import bundled_dialogues
from neuroq.errors import ConfigError, DataError
from neuroq.generate import GenerationConfig
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
from neuroq.train import TrainConfig



REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tokenizer = NeuroQTokenizer.train(bundled_dialogues(), TokenizerConfig(vocab_size=1500, num_threads=1))
    torch.manual_seed(0)
    model = NeuroQ(NeuroQConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=32))
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "ckpt", model, tokenizer)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text("吾輩は猫である。名前はまだ無い。\nどこで生れたかとんと見当がつかぬ。\n", encoding="utf-8")
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def help_text(command: str) -> str:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[command].format_help()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("command", "config", "skipped"),
    [("train", TrainConfig, {"model"}), ("train", NeuroQConfig, {"vocab_size"}), ("demo", TrainConfig, {"model"}),
     ("generate", GenerationConfig, set()), ("tokenizer", TokenizerConfig, set())],
)
def test_every_config_field_is_a_flag_of_its_subcommand(command, config, skipped):
    text = help_text(command)
    for field in dataclasses.fields(config):
        if field.name not in skipped:
            assert "--" + field.name.replace("_", "-") in text, field.name


def test_eval_prints_loss_perplexity_bits_per_char_and_counts_as_json(checkpoint, text_file, capsys):
    code, out, _ = run_main(["eval", "--checkpoint", str(checkpoint), "--text", str(text_file), "--device", "cpu"],
                            capsys)

    assert code == 0
    result = json.loads(out)
    assert set(result) == {"loss", "perplexity", "bits_per_char", "n_chars", "n_tokens"}
    assert result["n_chars"] == len(text_file.read_text(encoding="utf-8"))
    assert result["bits_per_char"] > 0


def test_eval_reads_jsonl_documents(checkpoint, tmp_path, capsys):
    docs = ["<USER>こんにちは<ASSISTANT>こんにちは", "吾輩は猫である。"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")

    code, out, _ = run_main(["eval", "--checkpoint", str(checkpoint), "--text", str(path)], capsys)

    assert code == 0 and json.loads(out)["n_chars"] == sum(len(d) for d in docs)


def test_an_unknown_flag_is_a_usage_error_naming_it(capsys):
    code, _, err = run_main(["train", "--learning-rate", "0.1"], capsys)

    assert code == 2 and "unrecognized arguments: --learning-rate" in err


def test_an_invalid_value_fails_before_any_work_naming_the_flag(tmp_path, capsys):
    code, _, err = run_main(["train", "--batch-size", "0", "--out-dir", str(tmp_path / "run")], capsys)

    assert code == 2 and "--batch-size must be an integer >= 1, got 0" in err
    assert not (tmp_path / "run").exists()


def test_invalid_model_and_sampling_values_name_their_flags(checkpoint, capsys):
    code, _, err = run_main(["train", "--n-embd", "100", "--n-head", "3"], capsys)
    assert code == 2 and "--n-embd (100) must be divisible by --n-head (3)" in err

    code, _, err = run_main(["generate", "--checkpoint", str(checkpoint), "--prompt", "a", "--top-p", "0"], capsys)
    assert code == 2 and "--top-p must be in (0, 1]" in err


def test_a_lfs_pointer_checkpoint_fails_with_the_git_lfs_message(tmp_path, text_file, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        (ckpt / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123456\n")

    code, _, err = run_main(["eval", "--checkpoint", str(ckpt), "--text", str(text_file)], capsys)

    assert code == 1
    assert "is a Git LFS pointer" in err and "git lfs pull" in err and "Traceback" not in err


def test_a_registry_uri_is_refused_with_a_clear_message(text_file, capsys):
    code, _, err = run_main(["eval", "--checkpoint", "models:/neuroq@champion", "--text", str(text_file)], capsys)

    assert code == 2 and "MLflow registry URI" in err


def test_generate_prints_json_samples(checkpoint, capsys):
    code, out, _ = run_main(["generate", "--checkpoint", str(checkpoint), "--prompt", "こんにちは", "--prompt", "猫",
                             "--chat", "--max-length", "5", "--temperature", "0", "--n", "2", "--json"], capsys)

    assert code == 0
    result = json.loads(out)
    assert [r["prompt"] for r in result] == ["こんにちは", "猫"]
    sample = result[0]["samples"][0]
    assert 1 <= sample["completion_tokens"] <= 5 and sample["finish_reason"] in ("stop", "length")
    assert len(result[1]["samples"]) == 2


def test_tokenizer_command_trains_and_saves_a_tokenizer(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in bundled_dialogues()))

    code, out, _ = run_main(["tokenizer", "--input", str(corpus), "--vocab-size", "1400", "--num-threads", "1",
                             "--out", str(tmp_path / "tok.model")], capsys)

    assert code == 0
    assert json.loads(out)["vocab_size"] == NeuroQTokenizer.load(tmp_path / "tok.model").vocab_size == 1400


def test_train_then_resume_continues_the_same_run(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--max-seq-len", "32", "--batch-size", "4", "--max-steps", "6",
            "--ckpt-interval", "3", "--eval-interval", "3", "--eval-batches", "2", "--out-dir", str(tmp_path),
            "--device", "cpu", "--no-progress", "--log-level", "WARNING"]

    code, out, _ = run_main(args, capsys)
    assert code == 0 and json.loads(out)["steps"] == 6
    final = load_checkpoint(tmp_path / "final")
    assert final.config.max_seq_len == 32 and final.extra["train_config"]["block_size"] == 32

    code, out, _ = run_main([*args[:8], "9", *args[9:], "--resume"], capsys)
    assert code == 0 and json.loads(out)["steps"] == 9
    assert json.loads(out)["tokens_seen"] == 9 * 4 * 32


def test_run_command_turns_a_library_error_into_one_line_and_an_exit_status(capsys):
    def fails(error: Exception):
        def command() -> None:
            raise error
        return command

    assert run_command(lambda: None) == 0
    assert run_command(fails(DataError("no input"))) == 2
    assert capsys.readouterr().err == "error: no input\n"
    assert run_command(fails(ConfigError("x must be 1")), prog="tool sub", status=1) == 1
    assert capsys.readouterr().err == "tool sub: error: x must be 1\n"
    with pytest.raises(ValueError):
        run_command(fails(ValueError("a bug")))  # not a library error: the traceback is the useful output


@pytest.mark.slow
def test_python_dash_m_neuroq_runs_as_a_program(checkpoint, text_file):
    proc = subprocess.run([sys.executable, "-m", "neuroq", "eval", "--checkpoint", str(checkpoint), "--text",
                           str(text_file)], capture_output=True, text=True, cwd=REPO, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert "bits_per_char" in json.loads(proc.stdout)
