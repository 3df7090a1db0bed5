"""Config checks that run when the workflow starts: errors name the key at fault, briefly."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def config_errors(config: dict, schema_path: str | Path) -> list[str]:
    """One line per violation: `key.path: what is wrong`, unexpected keys named."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    lines = []
    if "slurm" in config:
        # Where jobs go belongs to the cluster, not to the experiment.
        lines.append("slurm: account and partitions are set in profiles/slurm (SLURM_ACCOUNT, partitions.yaml), "
                     "not in the config; remove this section")
        config = {key: value for key, value in config.items() if key != "slurm"}
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator == "oneOf" and all("required" in o for o in error.validator_value):
            options = " / ".join(o["required"][0] for o in error.validator_value)
            lines.append(f"{_key_path(error)}: give exactly one of {options}")
        elif error.context:
            # The alternative that came closest says what is wrong (e.g. a key that only another kind takes).
            closest = jsonschema.exceptions.best_match(error.context)
            lines.append(f"{_key_path(closest)}: {closest.message}")
        else:
            lines.append(f"{_key_path(error)}: {error.message}")
    return lines


def cross_section_errors(config: dict) -> list[str]:
    """What the schema cannot say: settings of one section that another section's settings rule out."""
    from repgeom.finetune.params import FinetuneError, method_params, parse_params
    from repgeom.workflow.plan import compared_condition_errors

    lines = []
    generated = (config["dataset"].get("generate") or {}).get("kind")
    for name, entry in config["models"].items():
        if "build" in entry and generated != "invented":
            lines.append(f"models.{name}.build: a built model learns from the invented dataset's corpus, but "
                         "dataset.generate.kind is not `invented`; give the model as `gguf:`, `path:` or `hub:` instead")
    section = config.get("finetune") or {}
    for method in sorted(section.get("methods", {})):
        try:
            parse_params(method_params(section, method))
        except FinetuneError as err:
            lines.append(f"finetune.methods.{method}: {err}")
    return lines + compared_condition_errors(config)
