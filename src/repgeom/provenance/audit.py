"""`repgeom audit`: walk from the final artifacts back to the dataset and the model through their records,
re-hash every artifact, and report what does not hold.

Findings, one line each, `CATEGORY ARTIFACT: REASON`:

- TAMPERED: the artifact's content differs from the hash its own record gives;
- STALE: a consumer recorded another hash for an input than the input has now (or than the input's own record
  gives), or a config key the record depends on has another value in the current config;
- MISSING: an input that no longer exists, an artifact of the results folder without a (readable) record, or a
  recorded artifact that is gone;
- MIXED_CODE: an artifact made by another code version (commit and uncommitted diff) than most; it counts only
  under `--strict-code`, and is otherwise printed as a note.

Inputs outside the results folder (a local dataset or model copy) are sources: they need no record, but a change
to them still makes their consumers STALE.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from repgeom.errors import InputError
from repgeom.provenance.hashing import ZARR_META, RECORD_SUFFIX, canonical_json, hash_path, is_skipped
from repgeom.provenance.records import (ABSENT, RECORD_ATTR, RecordError, config_sha256, json_value, lookup,
                                        own_output, read_record, record_path, relative)

CATEGORIES = ("TAMPERED", "STALE", "MISSING", "MIXED_CODE")
FINAL_DIRS = ("tables", "figures")
FINAL_FILES = ("metrics/all.parquet", "metrics/overlap.parquet")
RESOLVED_CONFIG = "config.resolved.json"


@dataclass(frozen=True, order=True)
class Finding:
    rank: int
    artifact: str
    reason: str

    @property
    def category(self) -> str:
        return CATEGORIES[self.rank]

    def line(self) -> str:
        return f"{self.category} {self.artifact}: {self.reason}"


def short(sha: str | None) -> str:
    return sha[:12] if sha else "none"


def shown(value) -> str:
    if value is ABSENT:
        return "absent"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def code_key(record: dict) -> tuple:
    code = record.get("code") or {}
    return code.get("git_commit"), code.get("diff_sha256") if code.get("dirty") else None


def code_label(key: tuple) -> str:
    commit, diff = key
    label = short(commit) if commit else "unknown (not a git checkout)"
    return f"{label} with uncommitted changes (diff {short(diff)})" if diff else label


def config_differences(recorded, now, path: str):
    """(dotted key, recorded, now) for each leaf where the two differ."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        for key in sorted(set(recorded) | set(now), key=str):
            yield from config_differences(recorded.get(key, ABSENT), now.get(key, ABSENT), f"{path}.{key}")
    elif recorded != now and not (recorded is None and now is ABSENT):
        yield path, recorded, now


def load_config(path: str | Path, schema: str | Path | None = None) -> dict:
    """A YAML or JSON config, with the schema's defaults filled in as the workflow's validation fills them; an
    `InputError` in one line if the file (or the schema) is missing, unreadable, not YAML or not a mapping."""
    config = _read_yaml(path, "config")
    if schema is not None or Path(path).with_name("schema.yaml").is_file():
        fill_defaults(config, _read_yaml(schema or Path(path).with_name("schema.yaml"), "config schema"))
    return config


def _read_yaml(path: str | Path, what: str) -> dict:
    """A YAML (or JSON) mapping, or an `InputError` naming the file and what is wrong, in one line."""
    import yaml

    try:
        value = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"cannot read {what} {path}: not valid YAML{at}: {problem}") from None
    if not isinstance(value, dict):
        raise InputError(f"cannot read {what} {path}: not a mapping")
    return value


def fill_defaults(config: dict, schema: dict) -> None:
    """Like snakemake.utils.validate(set_default=True): each `properties` default is set where the key is absent."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop:
                    instance.setdefault(name, json_value(prop["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    validator = jsonschema.validators.extend(base, {"properties": set_defaults})(schema)
    for _ in validator.iter_errors(config):
        pass  # the workflow reports errors; here only the defaults matter


class Lineage:
    """Records and current hashes, each read once, with paths resolved as the job that wrote a record saw them."""

    def __init__(self):
        self.records: dict[str, dict | RecordError | None] = {}
        self.hashes: dict[str, tuple[str, str] | OSError] = {}

    def record(self, artifact: str) -> dict | RecordError | None:
        if artifact not in self.records:
            try:
                self.records[artifact] = read_record(artifact)
            except RecordError as err:
                where = str(record_path(artifact))
                self.records[artifact] = RecordError(str(err).replace(where, relative(where)))
        return self.records[artifact]

    def current(self, artifact: str) -> tuple[str, str] | OSError:
        if artifact not in self.hashes:
            try:
                self.hashes[artifact] = hash_path(artifact)
            except OSError as err:
                self.hashes[artifact] = err
        return self.hashes[artifact]

    @staticmethod
    def base(artifact: str, record: dict) -> str:
        """The working directory the job ran in, as it lies now: the artifact's path minus its recorded path."""
        recorded = Path(record["artifact"])
        if not recorded.is_absolute():
            parts, here = recorded.parts, Path(artifact).parts
            if len(here) > len(parts) and here[-len(parts):] == parts:
                return str(Path(*here[:-len(parts)]))
        return record.get("workdir") or os.getcwd()

    def inputs(self, artifact: str, record: dict) -> list[tuple[str, dict]]:
        base = self.base(artifact, record)
        return [(os.path.abspath(os.path.join(base, entry["path"])), entry) for entry in record["inputs"]]


def find_records(results_dir: str) -> list[str]:
    """Every artifact under `results_dir` that has a record (sidecar, or zarr group attributes), absolute paths."""
    found = []
    for folder, dirs, files in os.walk(results_dir):
        dirs.sort()
        if ZARR_META in files:
            try:
                meta = json.loads((Path(folder) / ZARR_META).read_text())
            except (OSError, ValueError):
                meta = {}
            if isinstance(meta, dict) and meta.get("node_type") == "array":
                dirs[:] = []  # chunk files below: nothing to find
                continue
            if isinstance(meta, dict) and RECORD_ATTR in (meta.get("attributes") or {}):
                found.append(os.path.abspath(folder))
        found += [os.path.abspath(os.path.join(folder, f[:-len(RECORD_SUFFIX)]))
                  for f in files if f.endswith(RECORD_SUFFIX)]
    return sorted(found)


def final_artifacts(results_dir: str) -> list[str]:
    finals = []
    for name in FINAL_DIRS:
        for folder, dirs, files in os.walk(os.path.join(results_dir, name)):
            dirs.sort()
            finals += [os.path.abspath(os.path.join(folder, f)) for f in files if not is_skipped(f)]
    finals += [os.path.abspath(os.path.join(results_dir, f)) for f in FINAL_FILES
               if os.path.exists(os.path.join(results_dir, f))]
    return finals


class Audit:
    def __init__(self, results_dir: str, config: dict | None = None, strict_code: bool = False):
        self.results_dir = os.path.abspath(results_dir)
        self.config = config
        self.strict_code = strict_code
        self.lineage = Lineage()
        self.findings: set[Finding] = set()
        self.visited: set[str] = set()
        self.gone_inputs: dict[str, list[str]] = defaultdict(list)
        self.code_versions: dict[str, tuple] = {}

    def add(self, category: str, artifact: str, reason: str) -> None:
        self.findings.add(Finding(CATEGORIES.index(category), relative(artifact), reason))

    def inside_results(self, path: str) -> bool:
        return path == self.results_dir or path.startswith(self.results_dir + os.sep)

    def run(self) -> list[Finding]:
        recorded = find_records(self.results_dir)
        consumed = set()
        for artifact in recorded:
            record = self.lineage.record(artifact)
            if isinstance(record, dict):
                consumed.update(path for path, _ in self.lineage.inputs(artifact, record))
        roots = sorted(set(final_artifacts(self.results_dir)) | {a for a in recorded if a not in consumed})
        for root in roots:
            self.visit(root, consumer=None)
        for path, consumers in self.gone_inputs.items():
            names = sorted(relative(c) for c in consumers)
            listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.add("MISSING", path, f"input of {listed} no longer exists")
        self.check_code_versions()
        return sorted(self.findings)

    def visit(self, artifact: str, consumer: str | None) -> None:
        if artifact in self.visited:
            return
        self.visited.add(artifact)
        record = self.lineage.record(artifact)
        if isinstance(record, RecordError):
            self.add("MISSING", artifact, f"no usable record: {record}")
            return
        if not os.path.lexists(artifact):
            if record is not None:
                self.add("MISSING", artifact, "has a provenance record but no longer exists")
            return
        if record is None:
            if self.inside_results(artifact):
                self.add("MISSING", artifact, "no provenance record" + (f" (input of {relative(consumer)})"
                                                                         if consumer else ""))
            return
        current = self.lineage.current(artifact)
        own = own_output(record)
        if isinstance(current, OSError):
            self.add("MISSING", artifact, f"cannot be read: {current}")
        elif current[1] != own["sha256"]:
            self.add("TAMPERED", artifact, f"content changed after its record (recorded {short(own['sha256'])}, "
                                           f"now {short(current[1])})")
        self.check_record(artifact, record)
        self.code_versions[artifact] = code_key(record)
        for path, entry in self.lineage.inputs(artifact, record):
            if not os.path.lexists(path):
                self.gone_inputs[path].append(artifact)
                continue
            self.check_input(artifact, path, entry)
            self.visit(path, consumer=artifact)

    def check_input(self, consumer: str, path: str, entry: dict) -> None:
        used = entry["sha256"]
        record = self.lineage.record(path)
        if isinstance(record, dict) and own_output(record)["sha256"] != used:
            self.add("STALE", consumer, f"input {relative(path)} was re-made after it was used "
                                        f"(used {short(used)}, its record now {short(own_output(record)['sha256'])})")
            return
        current = self.lineage.current(path)
        if not isinstance(current, OSError) and current[1] != used:
            self.add("STALE", consumer, f"input {relative(path)} changed since it was used "
                                        f"(used {short(used)}, now {short(current[1])})")

    def check_record(self, artifact: str, record: dict) -> None:
        subset = record.get("config_subset")
        if not isinstance(subset, dict):
            return
        if record.get("config_sha256") != config_sha256(subset):
            self.add("TAMPERED", artifact, "its record's config_sha256 does not match its config_subset")
        if self.config is None:
            return
        for key, value in sorted(subset.items()):
            now = lookup(self.config, key)
            for name, before, after in config_differences(value, now if now is ABSENT else json_value(now), key):
                self.add("STALE", artifact, f"config key {name} changed (recorded {shown(before)}, "
                                            f"now {shown(after)})")

    def check_code_versions(self) -> None:
        counts = Counter(self.code_versions.values())
        if len(counts) < 2:
            return
        common, n_common = sorted(counts.items(), key=lambda kv: (-kv[1], canonical_json(kv[0])))[0]
        for artifact, key in self.code_versions.items():
            if key != common:
                self.add("MIXED_CODE", artifact, f"made by code {code_label(key)}; {n_common} of {len(self.code_versions)} "
                                                 f"artifacts were made by {code_label(common)}")


def report(findings: list[Finding], strict_code: bool, n_checked: int, out=None) -> int:
    out = out or sys.stdout
    counted = [f for f in findings if f.category != "MIXED_CODE" or strict_code]
    notes = [f for f in findings if f not in counted]
    for finding in counted:
        print(finding.line(), file=out)
    for finding in notes:
        print(f"note: {finding.line()}", file=out)
    if not counted:
        extra = f" ({len(notes)} mixed-code note(s); --strict-code makes them count)" if notes else ""
        print(f"audit: {n_checked} artifacts checked, clean{extra}", file=out)
        return 0
    counts = Counter(f.category.lower().replace("_", " ") for f in counted)
    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    print(f"audit: {n_checked} artifacts checked, {len(counted)} finding(s): {summary}", file=out)
    return 1


def audit(results_dir: str, config: dict | None = None, strict_code: bool = False, out=None) -> int:
    """Audit `results_dir`, print the findings and a summary; 0 if clean, 1 otherwise."""
    checker = Audit(results_dir, config, strict_code)
    findings = checker.run()
    return report(findings, strict_code, len(checker.visited), out)


def _describe(record: dict) -> str:
    sha = short(own_output(record)["sha256"])
    wildcards = record.get("wildcards") or {}
    rule = f"rule {record.get('rule')}" + (" {" + ", ".join(f"{k}={v}" for k, v in sorted(wildcards.items())) + "}"
                                           if wildcards else "")
    return f"{rule}, code {code_label(code_key(record))}, made {record.get('ended', '?')}, sha256 {sha}"


def trace(artifact: str, out=None) -> int:
    """Print the lineage tree of one artifact: each input under its consumer, down to the dataset and the model."""
    out = out or sys.stdout
    lineage = Lineage()
    expanded: set[str] = set()

    def node(path: str, depth: int) -> None:
        pad = "  " * depth
        name = relative(path)
        record = lineage.record(path)
        if isinstance(record, RecordError):
            print(f"{pad}{name}  [unusable record: {record}]", file=out)
            return
        if not os.path.lexists(path):
            print(f"{pad}{name}  [missing]", file=out)
            return
        if record is None:
            print(f"{pad}{name}  [no record: a source]", file=out)
            return
        if path in expanded:
            print(f"{pad}{name}  (see above)", file=out)
            return
        expanded.add(path)
        print(f"{pad}{name}  {_describe(record)}", file=out)
        for key in ("model", "dataset"):
            if record.get(key):
                print(f"{pad}  {key}: {json.dumps(record[key], sort_keys=True)}", file=out)
        for input_path, _ in lineage.inputs(path, record):
            node(input_path, depth + 1)

    path = os.path.abspath(artifact)
    record = lineage.record(path)
    if not isinstance(record, dict):
        reason = record if isinstance(record, RecordError) else "it has no provenance record"
        raise InputError(f"--trace {relative(path)}: {reason}")
    node(path, 0)
    return 0
