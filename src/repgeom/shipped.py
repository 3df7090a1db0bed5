"""Files that ship inside the package (src/repgeom/resources/), found by name, so that a config or a rule's
parameters never hold a path of the checkout (a moved checkout must not look like changed settings)."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

DEEPSPEED_CONFIGS = ("zero2", "zero3")


def deepspeed_config_path(name_or_path: str) -> Path:
    """A shipped DeepSpeed config by name (`zero2`, `zero3`), or the user's own JSON file by path."""
    if name_or_path in DEEPSPEED_CONFIGS:
        return Path(str(resources.files("repgeom") / "resources" / "deepspeed" / f"{name_or_path}.json"))
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ValueError(f"DeepSpeed config {name_or_path!r} is neither a shipped one ({', '.join(DEEPSPEED_CONFIGS)}) "
                         "nor an existing JSON file")
    return path


def read_deepspeed_config(path: str | Path, error: type[Exception]) -> dict:
    """The DeepSpeed config at `path` as a dict, or `error` naming the file if it is unreadable, not JSON, or not
    a JSON object."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise error(f"cannot read DeepSpeed config {str(path)!r}: {err}") from err
    if not isinstance(config, dict):
        raise error(f"DeepSpeed config {str(path)!r} is not a JSON object")
    return config


def deepspeed_config_arg(value: str) -> Path:
    """`deepspeed_config_path` as an argparse type: a bad value is a usage error naming it."""
    import argparse

    try:
        return deepspeed_config_path(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
