"""The `repgeom` command: `repgeom run ... -- COMMAND` (the job wrapper) and `repgeom audit RESULTS_DIR`."""
from __future__ import annotations

import argparse
import os
import sys

USAGE = """usage: repgeom run --meta JSON [--inputs P...] [--outputs P...] [--extra-inputs P...] [--extra-outputs P...]
                   -- COMMAND...
       repgeom audit [RESULTS_DIR] [--strict-code] [--config CONFIG] [--schema SCHEMA] [--trace ARTIFACT]"""


def audit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repgeom audit",
        description="Check the provenance records of a results folder: re-hash every artifact from the final tables "
                    "and figures back to the dataset and the model; exit 1 on any TAMPERED, STALE or MISSING finding.")
    parser.add_argument("results_dir", nargs="?", help="the workflow's results folder (not needed with --trace)")
    parser.add_argument("--strict-code", action="store_true",
                        help="count artifacts made by different code versions (MIXED_CODE) as findings")
    parser.add_argument("--config", help="the config (YAML or JSON) to compare each record's config keys with; "
                        "default: RESULTS_DIR/config.resolved.json when present")
    parser.add_argument("--schema", help="config schema whose defaults fill --config (default: schema.yaml beside it)")
    parser.add_argument("--trace", metavar="ARTIFACT", help="print the lineage of ARTIFACT instead of auditing")
    return parser


def run_audit(argv: list[str]) -> int:
    from repgeom.errors import InputError
    from repgeom.provenance.audit import RESOLVED_CONFIG, audit, load_config, trace

    args = audit_parser().parse_args(argv)
    if args.trace:
        return trace(args.trace)
    if not args.results_dir:
        print("repgeom audit: give the results folder (or --trace ARTIFACT)", file=sys.stderr)
        return 2
    if not os.path.isdir(args.results_dir):
        print(f"repgeom audit: results folder {args.results_dir} does not exist", file=sys.stderr)
        return 2
    config_path = args.config
    if config_path is None and os.path.isfile(os.path.join(args.results_dir, RESOLVED_CONFIG)):
        config_path = os.path.join(args.results_dir, RESOLVED_CONFIG)
    config = None
    if config_path:
        try:
            config = load_config(config_path, args.schema)
        except InputError as err:
            print(f"repgeom audit: cannot read config {config_path}: {err}", file=sys.stderr)
            return 2
        print(f"audit: comparing config keys with {config_path}")
    return audit(args.results_dir, config, args.strict_code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from repgeom.provenance.wrapper import main as run_main

        return run_main(rest)
    if command == "audit":
        return run_audit(rest)
    print(f"repgeom: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2
