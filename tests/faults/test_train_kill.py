"""Training SIGKILLed for real (subprocesses), then resumed: it continues from the last complete checkpoint, no
half-written checkpoint is ever taken for one, and the losses after the resume are those of an uninterrupted run.

Exact equality is meaningful because CPU training here is deterministic: one thread everywhere, every random
number reseeded per step (see neuroq/train.py), so any difference is a resume bug, not noise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuroq.checkpoint import load_checkpoint, verify_checkpoint
from neuroq.train import train
from tests.conftest import REPO_ROOT
from tests.faults.conftest import one_thread
from tests.support.training import blocks, tiny_config

pytestmark = pytest.mark.slow

STEPS = 12
CKPT_EVERY = 4
# Brain mode and dropout: the resumed run must also reproduce the random streams, not just the data order.
MODEL = {"mode": "brain", "dropout": 0.1}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(corpus: dict, out_dir: Path, **overrides):
    return tiny_config(corpus, out_dir, model=MODEL, max_steps=STEPS, ckpt_interval=CKPT_EVERY, **overrides)


def _drive(corpus: dict, out_dir: Path, losses: Path, *args: str, resume: bool = False) -> subprocess.CompletedProcess:
    config = _config(corpus, out_dir, resume=resume).to_dict()
    return subprocess.run(
        [sys.executable, "-m", "tests.faults.train_driver", str(corpus["root"]), json.dumps(config), str(losses),
         *args],
        cwd=REPO_ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300,
    )


def _losses(path: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["step"]: row["train_loss"] for row in rows}


def _siblings(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> dict:
    """The reference run, in-process with the driver's single thread: its per-step losses and final weights."""
    out = tmp_path_factory.mktemp("uninterrupted")
    losses: dict[int, float] = {}

    def record(metrics: dict[str, float], step: int) -> None:
        if "train_loss" in metrics:
            losses[step] = metrics["train_loss"]

    with one_thread():
        result = train(_config(corpus, out), blocks(corpus, "train"), blocks(corpus, "val"), corpus["tokenizer"],
                       callbacks=[record])
    weights = load_checkpoint(out / "final").model.state_dict()
    return {"losses": losses, "val_loss": result.final_val_loss, "weights": weights}


@pytest.mark.parametrize(
    ("kill", "at", "left_behind"),
    [
        # In the forward pass of step 7: the last checkpoint is step 4's, steps 5 and 6 are lost and redone.
        ("mid-step", 6, []),
        # Writing step 8's checkpoint: weights written, tokenizer half written; `last` still holds step 4.
        ("mid-write", 8, [".last.tmp-"]),
        # No atomic exchange on this filesystem: step 4's checkpoint moved aside, step 8's not yet renamed in.
        ("between-renames", 8, [".last.old-", ".last.tmp-"]),
    ],
)
def test_a_run_sigkilled_resumes_from_its_last_complete_checkpoint_with_the_uninterrupted_losses(
    corpus, uninterrupted, tmp_path, kill, at, left_behind
):
    out = tmp_path / "run"
    killed = _drive(corpus, out, tmp_path / "killed.jsonl", "--kill", kill, "--at", str(at))

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = _losses(tmp_path / "killed.jsonl")
    assert sorted(before) == list(range(1, at + 1))
    assert before == {step: uninterrupted["losses"][step] for step in before}
    assert [name.rsplit("-", 1)[0] + "-" for name in _siblings(out)] == left_behind
    if kill == "mid-write":
        (partial,) = out.glob(".last.tmp-*")
        assert sorted(p.name for p in partial.iterdir()) == ["model.safetensors", "tokenizer.model"]
        assert verify_checkpoint(out / "last")["extra"]["step"] == CKPT_EVERY

    resumed = _drive(corpus, out, tmp_path / "resumed.jsonl", resume=True)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'last'} at step {CKPT_EVERY}" in resumed.stderr
    after = _losses(tmp_path / "resumed.jsonl")
    assert sorted(after) == list(range(CKPT_EVERY + 1, STEPS + 1))
    assert after == {step: uninterrupted["losses"][step] for step in after}
    assert _siblings(out) == []  # nothing half-written is left for anyone to mistake for a checkpoint
    assert verify_checkpoint(out / "last")["extra"]["step"] == STEPS
    weights = load_checkpoint(out / "final").model.state_dict()
    assert all(torch.equal(weights[k], uninterrupted["weights"][k]) for k in weights)


def _cli_train(corpus: dict, out_dir: Path, *extra: str) -> subprocess.Popen:
    """`python -m neuroq train` with the flags that rebuild `_config`: the same split, tokenizer and TrainConfig."""
    command = [
        sys.executable, "-m", "neuroq", "train", "--val-fraction", "0.1",
        "--tokenizer", str(corpus["root"] / "tokenizer.model"), "--preset", "tiny", "--mode", MODEL["mode"],
        "--dropout", str(MODEL["dropout"]), "--max-seq-len", "32", "--max-steps", str(STEPS), "--batch-size", "4",
        "--lr", "3e-3", "--warmup-steps", "2", "--eval-interval", "4", "--eval-batches", "2",
        "--ckpt-interval", str(CKPT_EVERY), "--log-interval", "1", "--no-progress", "--device", "cpu",
        "--out-dir", str(out_dir), *extra,
    ]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _checkpoint_step(path: Path) -> int:
    try:
        return json.loads((path / "config.json").read_text())["extra"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_python_m_neuroq_train_killed_from_outside_resumes_to_the_uninterrupted_weights(
    corpus, uninterrupted, tmp_path
):
    """The real CLI, SIGKILLed by another process as soon as its first checkpoint exists, wherever it then is."""
    out = tmp_path / "run"
    killed = _cli_train(corpus, out)
    deadline = time.monotonic() + 240
    while _checkpoint_step(out / "last") < CKPT_EVERY and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    killed.kill()
    killed.communicate()

    assert killed.returncode == -signal.SIGKILL and not (out / "final").exists()
    saved_step = verify_checkpoint(out / "last")["extra"]["step"]
    assert saved_step in (CKPT_EVERY, 2 * CKPT_EVERY)

    resumed = _cli_train(corpus, out, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)

    assert resumed.returncode == 0, stderr[-3000:]
    assert f"resuming from {out / 'last'} at step {saved_step}" in stderr
    summary = json.loads(stdout)
    assert summary["steps"] == STEPS
    assert (summary["train_loss"], summary["val_loss"]) == (uninterrupted["losses"][STEPS], uninterrupted["val_loss"])
    weights = load_checkpoint(out / "final").model.state_dict()
    assert all(torch.equal(weights[k], uninterrupted["weights"][k]) for k in weights)
