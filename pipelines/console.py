"""What `python -m pipelines.run local` shows while kfp.local runs the DAG: one line per step, a training
progress bar, and every line of every task kept in a log file.

kfp.local prints each task's whole executor log (its input JSON, library INFO lines, warnings) to stdout, about a
thousand lines a run. `StepConsole` takes that stream instead of the terminal: it writes all of it to
`<log_dir>/pipeline.log` and each task's part to `<log_dir>/<task>.log`, and shows the terminal one line per step
when it ends, with its duration and headline figure (read from the task's executor output, the same values KFP
passes on). With `verbose` the terminal gets the full stream as before.

kfp.local has no hook for this: its task logs are `print`s, its own messages go to a logging handler on
`sys.stdout` while a task runs and to the root logger otherwise (a cache hit), so `capturing()` redirects
`sys.stdout` and adds a root handler around the run: the one place they all pass.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from components.steps.training import PROGRESS_PATTERN

__all__ = ["StepConsole"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
_ENDED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_CACHED = re.compile(r"Task (?P<task>\S+) cache hit")
_OUTPUT_FILE = re.compile(r"Wrote executor output file to (?P<path>\S+?)\.?$")


def _artifact_metadata(output: Mapping[str, Any], name: str) -> dict[str, Any]:
    return output["artifacts"][name]["artifacts"][0]["metadata"]


def _documents(output: Mapping[str, Any]) -> str:
    metadata = _artifact_metadata(output, "data")
    return metadata.get("skipped") or f"{int(metadata['documents_out']):,} documents kept"


def _split(output: Mapping[str, Any]) -> str:
    train, val = (_artifact_metadata(output, name) for name in ("train_data", "val_data"))
    return _reused(train, f"{int(train['documents_out']):,} train / {int(val['documents_out']):,} validation documents")


def _training(output: Mapping[str, Any]) -> str:
    metrics = _artifact_metadata(output, "metrics")
    return (f"{int(metrics['steps'])} steps, {int(metrics['tokens_seen']):,} tokens, "
            f"train loss {metrics['final_train_loss']:.3f}, validation loss {metrics['final_val_loss']:.3f}")


def _reused(metadata: Mapping[str, Any], figure: str) -> str:
    return f"{figure}, reused: same data and knobs as an earlier run" if metadata.get("reused") else figure


def _shard(output: Mapping[str, Any]) -> str:
    metadata = _artifact_metadata(output, "data")
    return metadata.get("skipped") or f"shard {int(metadata['index'])}: {int(metadata['distinct']):,} distinct pages"


# The headline figure of each step, from its executor output (artifact metadata and output parameters).
HEADLINES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "start-run": lambda out: f"MLflow run {out['parameterValues']['run']['parent_run_id']}",
    "plan-cc-shards": lambda out: f"{len(out['parameterValues']['Output'])} shard(s)",
    "ingest-cc-shard": _shard,
    "ingest-hf": _documents,
    "ingest-common-crawl": _documents,
    "merge-dedup-split": _split,
    "train-tokenizer": lambda out: _reused(_artifact_metadata(out, "tokenizer"),
                                           f"{int(_artifact_metadata(out, 'tokenizer')['vocab_size']):,} pieces"),
    "train-neuroq": _training,
    "evaluate": lambda out: f"{_artifact_metadata(out, 'metrics')['val_bits_per_char']:.3f} bits/char",
    "register": lambda out: out["parameterValues"]["Output"],
}


class StepConsole(io.TextIOBase):
    """A text stream to redirect `sys.stdout` to while kfp.local runs (see the module docstring)."""

    def __init__(self, log_dir: Path, terminal: TextIO, *, verbose: bool = False) -> None:
        self.log_dir = log_dir
        self.terminal = terminal
        self.verbose = verbose
        log_dir.mkdir(parents=True, exist_ok=True)
        self._all = (log_dir / "pipeline.log").open("w", encoding="utf-8")
        self._pending = ""
        self._task: str | None = None
        self._task_log: TextIO | None = None
        self._started = 0.0
        self._outputs: dict[str, Path] = {}
        self._bar: tqdm | None = None
        self._in_run_folder = False

    @contextlib.contextmanager
    def capturing(self) -> Iterator[StepConsole]:
        """Send everything kfp.local prints or logs to this console while the block runs."""
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        # Ours alone: kfp.local swaps the root handlers while a task runs and puts back what it found.
        root.handlers = [logging.StreamHandler(self)]
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(self):
                yield self
        finally:
            root.handlers = handlers
            root.setLevel(level)
            self.close()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
        self._close_task()
        self._all.close()
        super().close()

    def _line(self, line: str) -> None:
        self._all.write(line + "\n")
        if self.verbose:
            self.terminal.write(line + "\n")
        plain = _ANSI.sub("", line)
        if started := _STARTED.search(plain):
            self._open_task(started["task"])
        elif ended := _ENDED.search(plain):
            self._end_task(ended["task"], ended["status"])
        elif (cached := _CACHED.search(plain)) and not self.verbose:
            self.terminal.write(f"  ↺ {cached['task']:<22} {'':8}  reused: same inputs as an earlier run "
                                "(kfp.local cache)\n")
        elif self._task_log is not None:
            self._task_log.write(line + "\n")
            if output := _OUTPUT_FILE.search(plain):
                self._outputs[self._task or ""] = Path(output["path"])
                self._move_into_run_folder(Path(output["path"]).parent.parent)
            elif (progress := PROGRESS_PATTERN.search(plain)) and not self.verbose:
                self._progress(int(progress["step"]), int(progress["total"]), float(progress["loss"]))

    def output(self, task: str) -> dict[str, Any]:
        """The executor output of a finished task: its output parameters and artifacts with their metadata."""
        return json.loads(self._outputs[task].read_text(encoding="utf-8"))

    def _move_into_run_folder(self, run_dir: Path) -> None:
        """kfp.local names the run's folder only once a task has run: the logs move there (open files follow).

        The first task's output lies right inside the run's folder; later ones may lie deeper (a ParallelFor's).
        """
        if not self._in_run_folder:
            self.log_dir = self.log_dir.rename(run_dir / "logs")
            self._in_run_folder = True

    def _open_task(self, task: str) -> None:
        self._close_task()
        self._task, self._started = task, time.monotonic()
        self._task_log = (self.log_dir / f"{task}.log").open("w", encoding="utf-8")

    def _end_task(self, task: str, status: str) -> None:
        seconds = time.monotonic() - self._started
        self._close_task()
        if self.verbose:
            return
        if status != "SUCCESS":
            self.terminal.write(f"  ✗ {task:<22} {seconds:6.1f} s  {status}: see {self.log_dir / f'{task}.log'}\n")
            return
        self.terminal.write(f"  ✓ {task:<22} {seconds:6.1f} s  {self._headline(task)}\n")
        self.terminal.flush()

    def _headline(self, task: str) -> str:
        figure = HEADLINES.get(task)
        return figure(self.output(task)) if figure is not None and task in self._outputs else ""

    def _progress(self, step: int, total: int, loss: float) -> None:
        if not self.terminal.isatty():
            return  # a bar redrawn in place means nothing in a log file or a pipe
        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"    {self._task}", file=self.terminal, leave=False,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]")
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix_str(f"loss {loss:.3f}")

    def _close_task(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._task_log is not None:
            self._task_log.close()
            self._task_log = None
        self._task = None
