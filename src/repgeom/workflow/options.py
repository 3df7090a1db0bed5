"""The command-line options of the jobs that depend on the config or the wildcards (the rules pass them on as
`{params.…}`): an option left out is the empty string."""
from __future__ import annotations

from collections.abc import Mapping

from repgeom.conditions import parse_condition


def option(name: str, value) -> str:
    """`NAME VALUE`, or "" when there is no value (None or "")."""
    return "" if value is None or value == "" else f"{name} {value}"


def prompt_options(config: Mapping, condition: str, subject_areas: str | None) -> str:
    """Options of the prompts job for `{k}shot` or `{k}shot-{variant}` (a control is seeded; `cross_subject` needs
    the subject -> area map, `subject_areas`, when it is not the shipped one)."""
    parsed = parse_condition(condition)
    options = f"--shots {parsed.shots}"
    if parsed.variant:
        options += f" --variant {parsed.variant} --seed {config['sampling']['seed']}"
        if subject_areas:
            options += f" --subject-areas {subject_areas}"
    return options


def extraction_parallel(config: Mapping, model: str) -> str:
    """How an extraction uses several GPUs: `data` (a rank per GPU, each a whole model, rows split), `device_map`
    (one process, layers sharded over the GPUs) or `zero3` (DeepSpeed ZeRO-3 over ranks)."""
    return config["models"][model].get("extraction_parallel", config["extraction"]["parallel"])


def extraction_ranks(mode: str, gpus: int) -> int:
    """Processes the launcher starts: one per GPU, except a device map's single process."""
    return 1 if mode == "device_map" else gpus


def extraction_parallel_option(mode: str, gpus: int) -> str:
    """The extraction's option for `mode` on `gpus` GPUs (none on one GPU, or for data parallelism)."""
    if gpus <= 1 or mode == "data":
        return ""
    return "--device-map auto" if mode == "device_map" else "--zero3 zero3"


def job_device(gpus: int) -> str:
    """The torch device of a job mapped to `gpus` GPUs: a job given none stays off the GPUs of its node."""
    return "cuda" if gpus > 0 else "cpu"


def token_sample_option(config: Mapping) -> str:
    """The all-token sample's layers, size and seed (`extraction.token_sample`), if the config takes one."""
    sample = config["extraction"].get("token_sample")
    if not sample:
        return ""
    layers = ",".join(map(str, sample["layers"]))
    return f"--token-sample-layers {layers} --token-sample-size {sample['size']} --seed {config['sampling']['seed']}"
