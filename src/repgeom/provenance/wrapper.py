"""`python -m repgeom.provenance run`: run one job's command and record, for each output, what made it.

    python -m repgeom.provenance run --meta JSON --inputs IN... --outputs OUT... [--extra-inputs P...]
        [--extra-outputs P...] -- COMMAND ARGS...

Before the command: stale records of the outputs are removed, and the inputs hashed (an input whose own record
still matches its size and mtime takes the hash from that record). The command inherits stdio; SIGTERM, SIGINT and
SIGHUP are passed on to it (a signal sent to the whole process group or Slurm step thus reaches it twice, which a
command that just exits on SIGTERM does not mind), and its exit status (or the signal that killed it) becomes the
wrapper's. Only after it succeeds are the outputs hashed and their records written, all of them or none.

Exit status (`repgeom.errors`): the command's own; 1 with one line `repgeom run: error: MESSAGE` when the job cannot
be run (a bad --meta, a missing input, a command that cannot start) or its outputs cannot be recorded after it
succeeded; 2 for a usage error.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from repgeom.errors import InputError, json_option
from repgeom.provenance.hashing import RECORD_SUFFIX, ZARR_META, hash_path, kind_of, stat_signature, zarr_group_hash
from repgeom.provenance.records import (SCHEMA_VERSION, RecordError, code_version, config_sha256, host_info, iso,
                                        own_output, package_versions, read_record, relative, remove_record, utc_now,
                                        write_record)

META_KEYS = ("rule", "wildcards", "params", "config_subset", "seeds", "model", "dataset")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_meta(text: str) -> dict:
    """The workflow's JSON description of the job (or `@FILE` holding it)."""
    meta = json_option(text, "--meta")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise InputError(f"--meta has unknown key(s) {unknown}; known: {list(META_KEYS)}")
    if not isinstance(meta.get("rule"), str) or not meta["rule"]:
        raise InputError("--meta lacks 'rule' (the rule's name)")
    subset = meta.get("config_subset") or {}
    if not isinstance(subset, dict):
        raise InputError("--meta: 'config_subset' must map dotted config keys to values")
    return {"wildcards": {}, "params": {}, "seeds": {}, "model": None, "dataset": None, **meta,
            "config_subset": subset}


def _unique(paths) -> list[str]:
    seen, out = set(), []
    for path in paths:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def input_entry(path: str) -> dict:
    kind = kind_of(path)
    if kind is None:
        raise InputError(f"input {path} does not exist")
    try:
        record = read_record(path)
    except RecordError:
        record = None
    if record is not None:
        own = own_output(record)
        if own.get("kind") == kind and all(own.get(k) == v for k, v in stat_signature(path, kind).items()):
            return {"path": relative(path), "kind": kind, "sha256": own["sha256"], "hash_from": "record"}
    return {"path": relative(path), "kind": kind, "sha256": hash_path(path)[1], "hash_from": "content"}


def _zarr_content_hash(path: str) -> str:
    """The hash the store writer kept when it completed the group (see repgeom.store.writing), else from disk."""
    try:
        attrs = json.loads((Path(path) / ZARR_META).read_text()).get("attributes", {})
    except (OSError, ValueError):
        attrs = {}
    stored = attrs.get("content_sha256")
    if attrs.get("complete") and isinstance(stored, str):
        return stored
    return zarr_group_hash(path)


def output_entry(path: str) -> dict:
    kind = kind_of(path)
    if kind is None:
        raise InputError(f"the command succeeded but did not make its output {path}")
    signature = stat_signature(path, kind)
    sha = _zarr_content_hash(path) if kind == "zarr" else hash_path(path)[1]
    return {"path": relative(path), "kind": kind, "sha256": sha, **signature}


def run_command(command: list[str]) -> int:
    """Run `command` with inherited stdio, passing on termination signals; its return code (negative: killed)."""
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        raise InputError(f"cannot start {command[0]!r}: {err}") from None

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_like(returncode: int) -> int:
    """The wrapper's own exit status for the command's: the same code, or death by the same signal."""
    if returncode >= 0:
        return returncode
    sig = -returncode
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP have no handler to reset
    os.kill(os.getpid(), sig)
    return 128 + sig  # only reached for a signal that does not terminate


def run_job(meta: dict, inputs: list[str], outputs: list[str], command: list[str], output_globs=()) -> int:
    """`output_globs`: patterns of outputs whose names the command decides (e.g. the adapters a training run
    saves), matched once it has succeeded."""
    started = utc_now()
    clock = time.perf_counter()
    inputs, outputs = _unique(inputs), _unique(outputs)
    for path in outputs + _matches(output_globs):
        remove_record(path)  # a half-written output must never look recorded
    code, host = code_version(), host_info()
    try:
        input_entries = [input_entry(path) for path in inputs]
    except (OSError, RecordError) as err:
        raise InputError(f"cannot hash the inputs: {err}") from None
    overhead = time.perf_counter() - clock

    returncode = run_command(command)
    ended = utc_now()
    if returncode != 0:
        return exit_like(returncode)

    clock = time.perf_counter()
    outputs = _unique(outputs + _matches(output_globs))
    try:
        output_entries = [output_entry(path) for path in outputs]
    except (OSError, RecordError) as err:
        raise InputError(f"the command succeeded but its outputs cannot be hashed: {err}") from None
    record = {
        "schema_version": SCHEMA_VERSION, "rule": meta["rule"], "wildcards": meta["wildcards"], "command": command,
        "workdir": os.getcwd(), "inputs": input_entries, "outputs": output_entries, "params": meta["params"],
        "config_subset": meta["config_subset"], "config_sha256": config_sha256(meta["config_subset"]),
        "code": code, "versions": package_versions(), "model": meta["model"], "dataset": meta["dataset"],
        "seeds": meta["seeds"], "host": host, "started": iso(started), "ended": iso(ended),
        "duration_s": round((ended - started).total_seconds(), 3),
    }
    # Time the wrapper itself took (hashing, git, host facts), to show that recording stays cheap.
    record["provenance_s"] = round(overhead + time.perf_counter() - clock, 3)
    written = []
    try:
        for path, entry in zip(outputs, output_entries):
            write_record(path, {**record, "artifact": entry["path"]})
            written.append(path)
    except BaseException as err:
        for path in written:  # all of the job's records or none
            remove_record(path)
        if isinstance(err, (OSError, RecordError, ValueError)):
            raise InputError(f"the command succeeded but its records cannot be written: {err}") from None
        raise
    print(f"provenance: recorded {len(outputs)} output(s) of rule {meta['rule']} "
          f"(job {record['duration_s']:.2f} s, provenance {record['provenance_s']:.2f} s)", file=sys.stderr)
    return 0


def _matches(patterns) -> list[str]:
    """The artifacts the patterns match, not their records."""
    return [path for pattern in patterns for path in sorted(glob.glob(pattern)) if not path.endswith(RECORD_SUFFIX)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repgeom run", description="Run a job's command and record its provenance.",
                                     epilog="The command follows `--`.")
    parser.add_argument("--meta", required=True, help="JSON object (or @FILE): rule, wildcards, params, "
                        "config_subset, seeds, model, dataset")
    for name, what in (("inputs", "declared inputs"), ("outputs", "declared outputs"),
                       ("extra-inputs", "undeclared inputs (e.g. a zarr group read in place)"),
                       ("extra-outputs", "undeclared outputs (e.g. a zarr group written in place)"),
                       ("extra-output-globs", "patterns of undeclared outputs, matched after the command succeeds")):
        parser.add_argument(f"--{name}", nargs="*", action="extend", default=[], metavar="PATH", help=what)
    return parser


def main(argv: list[str]) -> int:
    """`repgeom run` (run under `repgeom.errors.run_main` by the `repgeom` command): the command's exit status."""
    parser = build_parser()
    if "--" not in argv:
        parser.error("give the command after `--`")
    cut = argv.index("--")
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        parser.error("the command after `--` is empty")
    meta = parse_meta(args.meta)
    return run_job(meta, [*args.inputs, *args.extra_inputs], [*args.outputs, *args.extra_outputs], command,
                   args.extra_output_globs)
