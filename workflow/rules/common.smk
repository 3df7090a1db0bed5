# Input functions and the values rules are wired with: paths and lookups only. What they compute lives in
# src/repgeom/workflow/ (unit-tested there).
from snakemake.exceptions import WorkflowError

from repgeom.conditions import CONDITION_PATTERN
from repgeom.finetune.params import method_params
from repgeom.io import parquet_rows, write_json
from repgeom.plots import FIGURE_NAMES
from repgeom.workflow.config import config_errors, cross_section_errors
from repgeom.workflow.dataset import dataset_spec, generated_subjects, generates_dataset, subject_areas
from repgeom.workflow.jobs import as_json, provenance_meta
from repgeom.workflow.models import (
    gguf_source,
    made_by_workflow,
    model_shapes,
    model_spec as spec_of,
    models_pattern,
    stored_layers,
)
from repgeom.workflow.options import (
    extraction_parallel,
    extraction_parallel_option,
    extraction_ranks,
    job_device,
    option,
    prompt_options,
    token_sample_option,
)
from repgeom.workflow.plan import (
    adapter_checkpoint,
    finetune_methods as methods_of,
    finetuned_steps,
    layer_blocks,
    prompts_condition,
    run_conditions,
)
from repgeom.workflow.resources import JobResources

# Checked once, every error named; `validate` then fills in the schema's defaults. Each model's depth and width
# are read from its source here, so that a source that cannot be read is one line of the same message.
_problems = config_errors(config, workflow.source_path("../../config/schema.yaml"))
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))
validate(config, "../../config/schema.yaml")
MODEL_SHAPES, _problems = model_shapes(config)
_problems += cross_section_errors(config)
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))
RESULTS = config["results_dir"]
# The run's one activation store: a group per model and condition (repgeom.store).
STORE = f"{RESULTS}/activations.zarr"
MODELS = list(config["models"])
CONDITIONS = run_conditions(config)
# The generated dataset's folder, or None when the config points at a real one.
DATASET_FOLDER = f"{RESULTS}/dataset" if generates_dataset(config) else None
DATASET_SPEC = dataset_spec(config, DATASET_FOLDER)
SUBJECT_AREAS = subject_areas(config, DATASET_FOLDER)


wildcard_constraints:
    model=models_pattern(config),
    condition=CONDITION_PATTERN,
    method="[a-z_]+",
    layers=r"\d+-\d+",
    shots=r"\d+",


def finetune_methods():
    return methods_of(config)


def model_folder(model):
    return f"{RESULTS}/models/{model}"


def model_spec(model):
    """What `from_pretrained` gets: the run's own model folder (built or imported), a local path, or a hub id."""
    return spec_of(config["models"][model], model_folder(model))


def model_input(wildcards):
    """The build or import job's output when the workflow makes the model, so the DAG waits for it."""
    return [model_folder(wildcards.model)] if made_by_workflow(config["models"][wildcards.model]) else []


def analysis_blocks(model):
    """The `first-last` layer spans of the model's analysis jobs."""
    return layer_blocks(stored_layers(MODEL_SHAPES[model]), config["analysis"]["layers_per_job"])


def finetune_params(method):
    return method_params(config["finetune"], method)


def finetune_folder(model, method):
    return f"{RESULTS}/finetune/{model}/{method}"


def finetune_rows():
    """Rows of the fine-tuning set: known once `sample` has run (a checkpoint), since it depends on the data."""
    return parquet_rows(checkpoints.sample.get().output.finetune)


def training_runs(model):
    """method -> the `checkpoints.json` ({checkpoint: step}) its training run writes last."""
    return {method: f"{finetune_folder(model, method)}/checkpoints.json" for method in finetune_methods()}


def conditions(model):
    """Every condition of a model: k-shot, prompt controls, and (once the data is sampled) each checkpoint."""
    return CONDITIONS + list(finetuned_steps(config, finetune_rows))


def prompts_file(wildcards):
    """The prompts a condition reads (a fine-tuned condition: the 0-shot prompts)."""
    return f"{RESULTS}/prompts/{wildcards.model}/{prompts_condition(wildcards.condition)}.parquet"


def adapter_folder(wildcards):
    """The adapter a fine-tuned condition reads ("" for the base model)."""
    adapter = adapter_checkpoint(wildcards.condition)
    return f"{finetune_folder(wildcards.model, adapter[0])}/checkpoints/{adapter[1]}" if adapter else ""


def adapter_run(wildcards):
    """The training run whose adapter a fine-tuned condition reads, so that the extraction waits for it."""
    adapter = adapter_checkpoint(wildcards.condition)
    return f"{finetune_folder(wildcards.model, adapter[0])}/checkpoints.json" if adapter else []


JOBS = JobResources(
    config,
    hidden_size=lambda model: MODEL_SHAPES[model][1],
    generated_subjects=len(generated_subjects(config)) if DATASET_FOLDER else None,
)
job_resources, job_threads = JOBS.resources, JOBS.threads


# Provenance: every job runs under `python -m repgeom.provenance run`, which records for each output the
# rule, wildcards, input hashes, config subset, code version, packages, host and times (repgeom audit reads them).
TRACKED = "python -m repgeom.provenance run --meta {params.provenance:q} --inputs {input:q} --outputs {output:q}"


def provenance(rule_name, config_keys=(), seed_keys=(), params=None):
    """The wrapper's --meta of a rule (repgeom.workflow.jobs.provenance_meta)."""
    return provenance_meta(
        config,
        rule_name,
        config_keys,
        seed_keys,
        params,
        model_spec=model_spec,
        dataset={"name": config["dataset"]["name"], **DATASET_SPEC},
    )


def store_group(wildcards):
    return f"{STORE}/{wildcards.model}/{wildcards.condition}"


def write_resolved_config():
    """The config this run resolved: `repgeom audit` compares each record's config keys with it. Written only
    by a run that executes jobs (onstart), never by a dry run."""
    write_json(config, f"{RESULTS}/config.resolved.json")
