"""The `repgeom` command: `repgeom run ... -- COMMAND` (the job wrapper), `repgeom audit RESULTS_DIR` and
`repgeom plan CONFIG` (what a run will cost: repgeom.costs).

Both run under the entry points' error contract (`repgeom.errors`): bad input is one line `repgeom run: error: …` or
`repgeom audit: error: …` and exit status 1; a usage error exits 2. Otherwise `repgeom run` exits with the wrapped
command's status, and `repgeom audit` with 0 when the results are clean and 1 on any finding (listed).
"""
from __future__ import annotations

import argparse
import os
import sys

from repgeom.errors import InputError, run_main

USAGE = """usage: repgeom run --meta JSON [--inputs P...] [--outputs P...] [--extra-inputs P...] [--extra-outputs P...]
                   -- COMMAND...
       repgeom audit [RESULTS_DIR] [--strict-code] [--config CONFIG] [--schema SCHEMA] [--trace ARTIFACT]
       repgeom plan CONFIG [--cluster NODESxGPUS[:CPUS]] [--gpu KIND] [--calibrate RESULTS_DIR] [--compare RESULTS_DIR]
                    [--constants FILE] [--write-constants FILE] [--remaining] [--json FILE]"""


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
    from repgeom.provenance.audit import RESOLVED_CONFIG, audit, load_config, trace

    parser = audit_parser()
    args = parser.parse_args(argv)
    if args.trace:
        return trace(args.trace)
    if not args.results_dir:
        parser.error("give the results folder (or --trace ARTIFACT)")
    if not os.path.isdir(args.results_dir):
        raise InputError(f"results folder {args.results_dir} does not exist")
    config_path = args.config
    if config_path is None and os.path.isfile(os.path.join(args.results_dir, RESOLVED_CONFIG)):
        config_path = os.path.join(args.results_dir, RESOLVED_CONFIG)
    config = None
    if config_path:
        config = load_config(config_path, args.schema)
        print(f"audit: comparing config keys with {config_path}")
    return audit(args.results_dir, config, args.strict_code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from repgeom.provenance.wrapper import main as wrap_job

        return run_main(lambda: wrap_job(rest), "repgeom run")
    if command == "audit":
        return run_main(lambda: run_audit(rest), "repgeom audit")
    if command == "plan":
        from repgeom.costs.cli import run_plan

        return run_main(lambda: run_plan(rest), "repgeom plan")
    print(f"{USAGE}\nrepgeom: error: unknown command {command!r}", file=sys.stderr)
    return 2
