"""The main job as a newcomer runs it (`python -m pipelines.run local`, what `make run` calls) on the embedded
defaults: a short terminal story whose summary matches MLflow, a `curl` that works, and re-runs that reuse.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.steps.summary import DESCRIPTION_TAG, SERVE_PORT
from tests.support.mlflow_serve import mlflow_models_serve

pytestmark = pytest.mark.slow

# The defaults select no sharded source: the local run has no crawl tasks (pipelines.pipeline.pipeline_for).
STEPS = ("start-run", "ingest-hf", "merge-dedup-split", "train-tokenizer", "train-neuroq", "evaluate", "register")


@dataclass(frozen=True)
class MainJob:
    cwd: Path
    outputs: list[str]  # stdout of each run, in order

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"


def _main_job(cwd: Path, *flags: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run([sys.executable, "-m", "pipelines.run", "local", *flags], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> MainJob:
    """The defaults twice, then once with other data (a local JSONL file added as a Hugging Face source)."""
    cwd = tmp_path_factory.mktemp("main-job")
    extra = cwd / "extra.jsonl"
    extra.write_text("".join(f'{{"text": "これは追加の文書です。番号は{i}です。"}}\n' for i in range(40)), encoding="utf-8")
    outputs = [_main_job(cwd), _main_job(cwd),
               _main_job(cwd, "--data_sources", "bundled,huggingface", "--hf_path", str(extra))]
    return MainJob(cwd, outputs)


def _parent(job: MainJob, index: int):
    client = MlflowClient(job.tracking_uri)
    experiment = client.get_experiment_by_name("neuroq")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`neuroq.pipeline` = 'neuroq'",
                                 order_by=["attributes.start_time ASC"])
    return client, parents[index]


def test_the_first_run_prints_a_line_per_step_and_a_summary_whose_figures_are_mlflows(main_job):
    output = main_job.outputs[0]
    lines = output.splitlines()
    assert len(lines) <= 40, output
    for step in STEPS:
        assert any(line.lstrip().startswith(f"✓ {step} ") for line in lines), f"no line for {step}:\n{output}"
    assert "Executor" not in output and "Warning" not in output

    _, parent = _parent(main_job, 0)
    assert output.rstrip().endswith(parent.data.tags[DESCRIPTION_TAG].rstrip())  # the summary is MLflow's text
    metrics = parent.data.metrics
    assert f"validation {metrics['val_bits_per_char']:.3f} bits/char" in output
    assert f"{metrics['parameters'] / 1e6:.2f}M parameters" in output
    assert f"{int(metrics['tokens_seen']):,} tokens seen" in output
    assert parent.data.tags["registered_model"] == "neuroq/1"
    assert "`neuroq` version 1 is @challenger, now @champion" in output
    assert parent.info.run_name in output and parent.info.run_name.startswith("layered-2x64-bundled-")
    log_dir = Path(re.search(r"Every step's full log: (\S+)", output)[1])
    assert {f"{step}.log" for step in STEPS} <= {path.name for path in log_dir.iterdir()}
    assert "Got executor_input" in (log_dir / "train-neuroq.log").read_text(encoding="utf-8")


def test_the_printed_curl_command_answers_against_the_served_champion(main_job):
    curl = next(line for line in main_job.outputs[0].splitlines() if line.startswith("curl "))
    with mlflow_models_serve("models:/neuroq@champion", main_job.tracking_uri) as url:
        port = url.rsplit(":", 1)[1]
        command = shlex.split(curl.replace(f"localhost:{SERVE_PORT}", f"127.0.0.1:{port}"))
        result = subprocess.run([*command, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=120)
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200", body
    assert '"chat.completion"' in body


def test_a_second_run_with_the_same_parameters_reuses_the_data_and_the_tokenizer_and_says_so(main_job):
    output = main_job.outputs[1]
    assert re.search(r"↺ ingest-hf .*reused", output), output
    assert re.search(r"✓ merge-dedup-split .*reused", output), output
    assert re.search(r"✓ train-tokenizer .*reused", output), output
    assert re.search(r"✓ train-neuroq .*steps", output)  # training runs again: a new version is registered
    _, parent = _parent(main_job, 1)
    assert parent.data.tags["registered_model"] == "neuroq/2"


def test_a_run_with_other_data_computes_the_data_and_the_tokenizer_again(main_job):
    steps = main_job.outputs[2].split("Every step's full log")[0]
    assert re.search(r"✓ ingest-hf .*documents kept", steps), steps
    for step in ("ingest-hf", "merge-dedup-split", "train-tokenizer"):
        line = next(line for line in steps.splitlines() if re.match(rf"\s*\S {step} ", line))
        assert "reused" not in line, steps
