"""config/README.md documents the config: every key of config/schema.yaml has a row there, every row names a key
the schema has, a default stated there is the schema's, and every fine-tuning method key is listed."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from repgeom.finetune.params import FinetuneParams

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
README = (ROOT / "config/README.md").read_text()
# The name a placeholder stands for (`models.<model>`); the test compares placeholders, not their names.
PLACEHOLDER = re.compile(r"<[^<>]*>")


def normal(path: str) -> str:
    return PLACEHOLDER.sub("<>", path)


def resolve(node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = {**SCHEMA["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_keys(node: dict = SCHEMA, path: str = "", seen: set | None = None) -> dict[str, dict]:
    """Every key path of the schema, `<>` for a name the user chooses, with its (resolved) schema. A definition's
    keys are listed at its first use only (the job resources of `hardware.jobs.<kind>`, not again per model)."""
    seen = set() if seen is None else seen
    ref = node.get("$ref")
    if ref:
        if ref in seen:
            return {}
        seen.add(ref)
    node = resolve(node)
    keys = {}
    children = [(name, sub) for name, sub in (node.get("properties") or {}).items()]
    if isinstance(node.get("additionalProperties"), dict):
        children.append(("<>", node["additionalProperties"]))
    for name, sub in children:
        child = f"{path}.{name}" if path else name
        keys[child] = resolve(sub)
        keys.update(schema_keys(sub, child, seen))
    return keys


def tables() -> list[tuple[list[str], list[list[str]]]]:
    """The README's tables: (header cells, rows of cells)."""
    found, lines = [], README.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i > 0 and lines[i - 1].startswith("|"):
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                rows.append(split_row(row))
            found.append((split_row(lines[i - 1]), rows))
    return found


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented_keys() -> dict[str, list[str]]:
    """Rows of the key tables (header `key`): the key path, normalised, and the row's cells."""
    rows = {}
    for header, body in tables():
        if header[0] == "key":
            for cells in body:
                key = re.fullmatch(r"`([^`]+)`", cells[0])
                assert key, f"config/README.md: a key table's row does not start with one `key`: {cells[0]}"
                rows[normal(key.group(1))] = dict(zip(header, cells))
    return rows


def test_every_schema_key_is_documented():
    missing = sorted(set(schema_keys()) - set(documented_keys()))
    assert not missing, f"keys of config/schema.yaml without a row in config/README.md: {missing}"


def test_every_documented_key_is_in_the_schema():
    unknown = sorted(set(documented_keys()) - set(schema_keys()))
    assert not unknown, f"config/README.md documents keys config/schema.yaml does not have: {unknown}"


def test_documented_defaults_are_the_schema_defaults():
    rows, keys = documented_keys(), schema_keys()
    for key, spec in keys.items():
        if "default" in spec and key in rows:
            assert rows[key]["default"] == str(spec["default"]), (key, rows[key]["default"], spec["default"])


def test_every_finetune_method_key_is_documented():
    listed = set()
    for header, body in tables():
        if header[0] == "method key":
            for cells in body:
                listed.update(re.findall(r"`([^`]+)`", cells[0]))
    fields = {field.name for field in dataclasses.fields(FinetuneParams)}
    assert listed == fields, (f"undocumented: {sorted(fields - listed)}", f"not a method key: {sorted(listed - fields)}")
