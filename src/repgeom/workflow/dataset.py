"""The dataset a run reads, from the config's `dataset` section: a real one (hub id or local path) or one the
workflow generates into the results folder."""
from __future__ import annotations

from collections.abc import Mapping


def generates_dataset(config: Mapping) -> bool:
    return "generate" in config["dataset"]


def generated_subjects(config: Mapping) -> list[str]:
    """The subjects of the generated dataset (its kind fixes them)."""
    if config["dataset"]["generate"]["kind"] == "facts":
        from repgeom.data.facts import SUBJECT_AREAS
    else:
        from repgeom.data.synthetic import SUBJECT_AREAS
    return list(SUBJECT_AREAS)


def dataset_spec(config: Mapping, folder: str | None) -> dict:
    """The `dataset` section as the loader takes it: a generated dataset is the local path `folder`."""
    spec = {k: v for k, v in config["dataset"].items() if k in ("id", "path", "revision")}
    if folder:
        spec["path"] = folder
    return spec


def subject_areas(config: Mapping, folder: str | None) -> str | None:
    """The subject -> area map the cross_subject control needs: the config's, the generated dataset's (in `folder`),
    or None for the shipped 57 MMLU subjects."""
    if "subject_areas" in config["dataset"]:
        return config["dataset"]["subject_areas"]
    return f"{folder}/subject_areas.json" if folder else None
