"""Command line: ``python -m neuroq.ingest``.

    # a local JSONL of instruction/response pairs plus 5,000 Common Crawl records, as Parquet
    python -m neuroq.ingest --out data/ingest --format parquet \\
        --hf pairs.jsonl --template '<USER>{instruction}<ASSISTANT>{response}' \\
        --cc CC-MAIN-2024-10 --cc-max-records 5000

    # everything from a JSON config (IngestConfig.to_dict() shape); flags override or add to it
    python -m neuroq.ingest --config ingest.json --out data/ingest2
    python -m neuroq.ingest --print-config > ingest.json     # the defaults, to edit

Flags add at most one Hugging Face and one Common Crawl source; more sources go in the config file.
Exit status 0 on success, 2 when the configuration or a source is unusable (the message says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from neuroq.cli import run_command
from neuroq.errors import ConfigError
from neuroq.ingest.config import CommonCrawlConfig, HFSourceConfig, IngestConfig
from neuroq.ingest.pipeline import run_ingest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neuroq.ingest", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="JSON file in IngestConfig.to_dict() shape")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    hf = parser.add_argument_group("Hugging Face source")
    hf.add_argument("--hf", metavar="PATH", help="hub name, json/text/parquet/csv (with --hf-data-files), "
                                               "a local file or folder, or a save_to_disk folder")
    hf.add_argument("--hf-name", help="hub configuration (subset)")
    hf.add_argument("--hf-split")
    hf.add_argument("--hf-data-files", nargs="+", metavar="FILE")
    hf.add_argument("--text-column")
    hf.add_argument("--template", help="str.format over columns, e.g. '<USER>{instruction}<ASSISTANT>{response}'")
    hf.add_argument("--id-column")
    hf.add_argument("--streaming", action="store_true", default=None)
    hf.add_argument("--hf-max-records", type=int)
    hf.add_argument("--hf-max-chars", type=int)
    hf.add_argument("--hf-quality", action="store_true", default=None, dest="hf_apply_quality_filters",
                    help="apply the web-page quality filters to this source too")

    cc = parser.add_argument_group("Common Crawl source")
    cc.add_argument("--cc", metavar="CRAWL_ID", help="e.g. CC-MAIN-2024-10")
    cc.add_argument("--cc-endpoint", dest="cc_endpoint_url", help="S3 endpoint URL (default: AWS)")
    cc.add_argument("--cc-bucket")
    cc.add_argument("--cc-signed", action="store_false", default=None, dest="cc_anonymous",
                    help="sign requests with AWS credentials instead of anonymous access")
    cc.add_argument("--cc-max-records", type=int)
    cc.add_argument("--cc-max-files", type=int)
    cc.add_argument("--cc-first-file", type=int)
    cc.add_argument("--cc-language", dest="cc_identified_language", help="skip records not tagged with it, e.g. jpn")

    out = parser.add_argument_group("dedup and output")
    out.add_argument("--out", dest="output_dir", help="output folder (manifest.json, train/, validation/)")
    out.add_argument("--format", choices=("jsonl", "jsonl.gz", "parquet"))
    out.add_argument("--val-fraction", type=float)
    out.add_argument("--shard-docs", type=int, dest="max_documents_per_shard")
    out.add_argument("--overwrite", action="store_true", default=None, help="replace a non-empty output folder")
    out.add_argument("--near-dup-threshold", type=float, dest="threshold")
    out.add_argument("--no-near-dup", action="store_false", default=None, dest="near")
    return parser


def _given(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """Config fields for the flags that were given (flag attribute -> field name)."""
    return {field: getattr(args, attr) for attr, field in mapping.items() if getattr(args, attr) is not None}


def _read_config_file(path: Path) -> IngestConfig:
    try:
        return IngestConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def build_config(args: argparse.Namespace) -> IngestConfig:
    base = _read_config_file(args.config) if args.config else IngestConfig()
    sources = list(base.sources)
    if args.hf:
        sources.append(HFSourceConfig(path=args.hf, **_given(args, {
            "hf_name": "name", "hf_split": "split", "hf_data_files": "data_files", "text_column": "text_column",
            "template": "template", "id_column": "id_column", "streaming": "streaming",
            "hf_max_records": "max_records", "hf_max_chars": "max_chars",
            "hf_apply_quality_filters": "apply_quality_filters"})))
    if args.cc:
        sources.append(CommonCrawlConfig(crawl_id=args.cc, **_given(args, {
            "cc_endpoint_url": "endpoint_url", "cc_bucket": "bucket", "cc_anonymous": "anonymous",
            "cc_max_records": "max_records", "cc_max_files": "max_files", "cc_first_file": "first_file",
            "cc_identified_language": "identified_language"})))
    output = dataclasses.replace(base.output, **_given(args, {
        "output_dir": "output_dir", "format": "format", "val_fraction": "val_fraction",
        "max_documents_per_shard": "max_documents_per_shard", "overwrite": "overwrite"}))
    dedup = dataclasses.replace(base.dedup, **_given(args, {"threshold": "threshold", "near": "near"}))
    return dataclasses.replace(base, sources=tuple(sources), output=output, dedup=dedup)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    config = build_config(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        return
    result = run_ingest(config)
    manifest = result.manifest
    print(json.dumps({"output_dir": str(result.output_dir), "documents_in": manifest["documents_in"],
                      "documents_out": manifest["documents_out"], "content_digest": manifest["content_digest"],
                      "stages": manifest["stages"]}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    sys.exit(main())
