# Input functions and the values rules are wired with; what they compute lives in src/repgeom/workflow/.
import functools
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from repgeom.conditions import CONDITION_PATTERN, finetuned_condition, parse_condition
from repgeom.finetune.params import method_params
from repgeom.finetune.plan import checkpoint_steps
from repgeom.models.gguf import gguf_shape, resolve_gguf
from repgeom.plots import FIGURE_NAMES
from repgeom.workflow.config import config_errors, cross_section_errors
from repgeom.workflow.jobs import as_json, job_meta
from repgeom.workflow.models import folder_shape, made_by_workflow, model_source
from repgeom.workflow.resources import JobResources

# Checked once, every error named; `validate` then fills in the schema's defaults.
_problems = config_errors(config, workflow.source_path("../../config/schema.yaml"))
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))
validate(config, "../../config/schema.yaml")
_problems = cross_section_errors(config)
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))
RESULTS = config["results_dir"]
# The run's one activation store: a group per model and condition (repgeom.store).
STORE = f"{RESULTS}/activations.zarr"
MODELS = list(config["models"])
# Sorted, here and for the methods: the same settings in another key order are the same run.
BASE_CONDITIONS = [f"{k}shot" for k in sorted(config["shots"])]
VARIANT_CONDITIONS = [f"{k}shot-{name}" for name, ks in sorted(config["variants"].items()) for k in sorted(ks)]
CONDITIONS = BASE_CONDITIONS + VARIANT_CONDITIONS


wildcard_constraints:
    model="|".join(MODELS),
    condition=CONDITION_PATTERN,
    method="[a-z_]+",
    layers=r"\d+-\d+",
    shots=r"\d+",


def finetune_methods():
    return sorted(config.get("finetune", {}).get("methods", {}))


def dataset_folder():
    """The generated dataset's folder, or None when the config points at a real one."""
    return f"{RESULTS}/dataset" if "generate" in config["dataset"] else None


def generated_subjects():
    """The subjects of the generated dataset (its kind fixes them)."""
    if config["dataset"]["generate"]["kind"] == "facts":
        from repgeom.data.facts import SUBJECT_AREAS
    else:
        from repgeom.data.synthetic import SUBJECT_AREAS
    return list(SUBJECT_AREAS)


def dataset_spec():
    """The `dataset` section as the loader takes it: the generated folder is a local path."""
    spec = {k: v for k, v in config["dataset"].items() if k in ("id", "path", "revision")}
    if dataset_folder():
        spec["path"] = dataset_folder()
    return spec


def subject_areas():
    """The subject -> area map the cross_subject control needs: the config's, the generated dataset's,
    or None for the shipped 57 MMLU subjects."""
    if "subject_areas" in config["dataset"]:
        return config["dataset"]["subject_areas"]
    return f"{dataset_folder()}/subject_areas.json" if dataset_folder() else None


def prompt_options(condition):
    """Command-line options of the prompts job for `{k}shot` or `{k}shot-{variant}`."""
    shots, _, variant = condition.partition("-")
    options = f"--shots {int(shots.removesuffix('shot'))}"
    if variant:
        options += f" --variant {variant} --seed {config['sampling']['seed']}"
        if subject_areas():
            options += f" --subject-areas {subject_areas()}"
    return options


def model_folder(model):
    return f"{RESULTS}/models/{model}"


def models_pattern(source):
    """A wildcard pattern matching the models of one source (`build`, `gguf`), so that one rule makes each."""
    names = [re.escape(name) for name, entry in config["models"].items() if model_source(entry) == source]
    return "|".join(names) or "(?!)"


def model_spec(model):
    """What `from_pretrained` gets: the run's own model folder (built or imported), a local path, or a hub id."""
    entry = config["models"][model]
    if made_by_workflow(entry):
        return model_folder(model)
    return entry.get("path") or entry["hub"]


def model_input(wildcards):
    """The build or import job's output when the workflow makes the model, so the DAG waits for it."""
    return [model_folder(wildcards.model)] if made_by_workflow(config["models"][wildcards.model]) else []


def gguf_source(model):
    """A GGUF model's source as the import job takes it, with the installed version of the package shipping it
    (a package that is not installed stops the workflow with the pip command that installs it)."""
    source = dict(config["models"][model]["gguf"])
    if "package" in source:
        source["version"] = resolve_gguf(source).version
    return source


@functools.cache  # read once per model: input and resource functions ask for it for every job
def model_shape(model):
    """(decoder blocks, hidden size), read from the model: the build settings, the GGUF file's header, a local
    folder's config.json, or the config for a hub id (a dry run stays offline)."""
    entry = config["models"][model]
    source = model_source(entry)
    if source == "build":
        return entry["build"]["architecture"]["num_layers"], entry["build"]["architecture"]["hidden_size"]
    if source == "gguf":
        return gguf_shape(entry["gguf"])
    if source == "path":
        return folder_shape(entry["path"])
    return entry["num_layers"], entry.get("hidden_size")


def stored_layers(model):
    """Layers in the store: the input of every decoder block plus the final norm."""
    return model_shape(model)[0] + 1


def layer_blocks(model):
    """`first-last` spans of `analysis.layers_per_job` layers: one analysis job each."""
    step, n = config["analysis"]["layers_per_job"], stored_layers(model)
    return [f"{first}-{min(first + step, n) - 1}" for first in range(0, n, step)]


def finetune_params(method):
    return method_params(config["finetune"], method)


def finetune_folder(model, method):
    return f"{RESULTS}/finetune/{model}/{method}"


def finetune_rows():
    """Rows of the fine-tuning set: known once `sample` has run (a checkpoint), since it depends on the data."""
    import pyarrow.parquet as pq

    return pq.read_metadata(checkpoints.sample.get().output.finetune).num_rows


def training_runs(model):
    """method -> the `checkpoints.json` ({checkpoint: step}) its training run writes last."""
    return {method: f"{finetune_folder(model, method)}/checkpoints.json" for method in finetune_methods()}


def finetuned_steps(model):
    """Condition `ft-{method}-{checkpoint}` -> optimizer steps done, for every adapter the config trains."""
    methods = finetune_methods()
    if not methods:
        return {}
    n_rows = finetune_rows()
    return {
        finetuned_condition(method, name): step
        for method in methods
        for name, step in checkpoint_steps(n_rows, finetune_params(method)).items()
    }


def conditions(model):
    """Every condition of a model: k-shot, prompt controls, and (once the data is sampled) each checkpoint."""
    return CONDITIONS + list(finetuned_steps(model))


def extract_inputs(wildcards):
    """A fine-tuned condition reads the 0-shot prompts and waits for its training run."""
    condition = parse_condition(wildcards.condition)
    prompts = "0shot" if condition.is_finetuned else wildcards.condition
    inputs = {
        "prompts": f"{RESULTS}/prompts/{wildcards.model}/{prompts}.parquet",
        "model": model_input(wildcards),
    }
    if condition.is_finetuned:
        inputs["adapters"] = f"{finetune_folder(wildcards.model, condition.method)}/checkpoints.json"
    return inputs


def adapter_option(wildcards):
    condition = parse_condition(wildcards.condition)
    if not condition.is_finetuned:
        return ""
    return f"--adapter {finetune_folder(wildcards.model, condition.method)}/checkpoints/{condition.checkpoint}"


def extraction_parallel(model):
    """How an extraction uses several GPUs: `data` (a rank per GPU, each a whole model, rows split),
    `device_map` (one process, layers sharded over the GPUs) or `zero3` (DeepSpeed ZeRO-3 over ranks)."""
    return config["models"][model].get("extraction_parallel", config["extraction"]["parallel"])


def extraction_ranks(wildcards):
    """Processes the launcher starts: one per GPU of the hardware map, except a device map's single process."""
    return 1 if extraction_parallel(wildcards.model) == "device_map" else JOBS.gpus("extract", wildcards.model)


def extraction_parallel_option(wildcards):
    mode = extraction_parallel(wildcards.model)
    if JOBS.gpus("extract", wildcards.model) <= 1 or mode == "data":
        return ""
    if mode == "device_map":
        return "--device-map auto"
    return "--zero3 zero3"


JOBS = JobResources(
    config,
    hidden_size=lambda model: model_shape(model)[1],
    generated_subjects=len(generated_subjects()) if dataset_folder() else None,
)
job_resources, job_threads = JOBS.resources, JOBS.threads


def token_sample_option(wildcards):
    sample = config["extraction"].get("token_sample")
    if not sample:
        return ""
    layers = ",".join(map(str, sample["layers"]))
    return f"--token-sample-layers {layers} --token-sample-size {sample['size']} --seed {config['sampling']['seed']}"


# Provenance: every job runs under `python -m repgeom.provenance run`, which records for each output the
# rule, wildcards, input hashes, config subset, code version, packages, host and times (repgeom audit reads them).
TRACKED = "python -m repgeom.provenance run --meta {params.provenance:q} --inputs {input:q} --outputs {output:q}"


def provenance(rule_name, config_keys=(), seed_keys=(), params=None):
    """The wrapper's --meta of a rule: `config_keys` / `seed_keys` are dotted config keys, `{model}` and other
    wildcards filled in; `params(wildcards)` gives the resolved parameters where the config leaves defaults."""

    def meta(wildcards):
        model = wildcards.get("model")
        return job_meta(
            config, rule_name, dict(wildcards.items()), config_keys, seed_keys,
            params=params(wildcards) if params else None,
            model={"name": model, "spec": model_spec(model), "revision": config["models"][model].get("revision")}
            if model else None,
            dataset={"name": config["dataset"]["name"], **dataset_spec()},
        )

    return meta


def store_group(wildcards):
    return f"{STORE}/{wildcards.model}/{wildcards.condition}"


def adapter_inputs(wildcards):
    """The adapter folder a fine-tuned condition reads (recorded as an input of its extraction)."""
    condition = parse_condition(wildcards.condition)
    if not condition.is_finetuned:
        return ""
    return f"--extra-inputs {finetune_folder(wildcards.model, condition.method)}/checkpoints/{condition.checkpoint}"


def write_resolved_config():
    """The config this run resolved: `repgeom audit` compares each record's config keys with it. Written only
    by a run that executes jobs (onstart), never by a dry run."""
    from repgeom.io import write_json

    write_json(config, f"{RESULTS}/config.resolved.json")
