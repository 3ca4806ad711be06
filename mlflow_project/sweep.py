"""`mlflow run . -e sweep`, or `python -m mlflow_project.sweep`: a hyperparameter sweep, and one trial of it.

    python -m mlflow_project.sweep run --corpus aozora_pd.jsonl.gz --token-budget 4100000 --n-trials 20 \
        --recipe-out recipes/aozora-e128.json
    python -m neuroq train --recipe recipes/aozora-e128.json --input aozora_pd.jsonl.gz ...

`run` continues the Optuna study in --out-dir (or starts it) for --n-trials more trials, one MLflow child run per
trial under the sweep's parent run, prints the best trial and the sweep table, and writes the best settings as a
recipe. `trial` trains one set of settings given as flags and prints `val_bits_per_char=...` after every
validation, for a Katib trial (deploy/k8s/katib/), whose metrics collector reads stdout: the training knobs are
required, the model options default to NeuroQConfig's (rotary positions, the rest off: `--position learned --norm
rmsnorm --tie-embeddings --zero-init-residual --z-loss 1e-4 --logit-softcap 30` change them; a switch also takes
`=true` / `=false`, as Katib writes it). Every
SweepConfig field is a flag of both (`token_budget` -> `--token-budget`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.steps.sweep import run_sweep
from neuroq.cli import ConfigArgs, flagify, run_command
from neuroq.sweep import KNOBS, OPTION_DEFAULTS, SweepConfig, prepare_data, recipe_from, run_trial


def _run(ns: argparse.Namespace, cfg: SweepConfig) -> None:
    summary = run_sweep(cfg, tracking_uri=ns.tracking_uri, experiment_name=ns.experiment_name,
                        recipe_out=ns.recipe_out, recipe_name=ns.recipe_name)
    print(summary.table)
    print(json.dumps({k: v for k, v in summary.to_dict().items() if k != "table"}, ensure_ascii=False, indent=2))


def _trial(ns: argparse.Namespace, cfg: SweepConfig) -> None:
    settings: dict[str, Any] = {name: getattr(ns, name) for name in KNOBS}
    # Trials of one experiment share out_dir (its prepared data); each trains in a folder of its own settings.
    name = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def report(index: int, value: float) -> None:
        print(f"val_bits_per_char={value:.6f}", flush=True)

    result = run_trial(cfg, settings, prepare_data(cfg), str(Path(cfg.out_dir) / "trials" / name), report=report)
    print(f"tokens_per_s={result.tokens_per_s:.1f}")
    print(f"val_bits_per_char={result.val_bits_per_char:.6f}", flush=True)
    if ns.recipe_out:
        notes = {"val_bits_per_char": result.val_bits_per_char, "settings": settings}
        recipe_from(cfg, ns.recipe_name or f"trial-{name}", result.train_config, notes=notes).save(ns.recipe_out)


def _sweep_args(parser: argparse.ArgumentParser) -> ConfigArgs:
    # `mlflow run -P token_budget=...` passes undeclared parameters as `--token_budget`: both spellings work.
    aliases = {f.name: [f"--{f.name}"] for f in dataclasses.fields(SweepConfig) if "_" in f.name}
    return ConfigArgs(parser.add_argument_group("sweep"), SweepConfig, aliases=aliases)


def _switch(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlflow_project.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="an Optuna sweep tracked in MLflow; writes the best recipe")
    run.add_argument("--tracking-uri", "--tracking_uri", default="", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                                        "sqlite:///mlflow.db)")
    run.add_argument("--experiment-name", "--experiment_name", default="neuroq-sweep")
    run.add_argument("--recipe-out", "--recipe_out", default="", help="where the best recipe goes (default OUT_DIR/recipe.json)")
    run.add_argument("--recipe-name", "--recipe_name", default="", help="the recipe's name (default: the study name)")
    run.set_defaults(config_args=_sweep_args(run), work=_run)
    trial = commands.add_parser("trial", help="train one set of settings; prints val_bits_per_char=... (Katib)")
    trial.add_argument("--recipe-out", "--recipe_out", default="", help="also write these settings as a recipe")
    trial.add_argument("--recipe-name", "--recipe_name", default="", help="the recipe's name (default trial-HASH)")
    knobs = trial.add_argument_group("settings")
    for name, (_, values) in KNOBS.items():
        flag = f"--{name.replace('_', '-')}"
        if name not in OPTION_DEFAULTS:
            knobs.add_argument(flag, dest=name, required=True, type=int if name == "batch_size" else float)
            continue
        default = OPTION_DEFAULTS[name]
        if isinstance(default, bool):
            knobs.add_argument(flag, dest=name, nargs="?", const=True, default=default, type=_switch,
                               metavar="true|false", help=f"default {str(default).lower()}")
        elif isinstance(default, str):
            knobs.add_argument(flag, dest=name, default=default, choices=list(values), help=f"default {default}")
        else:
            knobs.add_argument(flag, dest=name, default=default, type=float, help=f"default {default} (0 = off)")
    trial.set_defaults(config_args=_sweep_args(trial), work=_trial)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[ns.command]  # type: ignore[union-attr]

    def work() -> None:
        ns.work(ns, ns.config_args.build(ns))

    return run_command(work, prog=f"sweep {ns.command}",
                       usage_error=lambda message: sub.error(flagify(message, ns.config_args.names)))


if __name__ == "__main__":
    sys.exit(main())
