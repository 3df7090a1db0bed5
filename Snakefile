# repgeom: the geometry of LLM representations under in-context learning and fine-tuning.
# Rules are thin: each wires files and parameters and calls `python -m repgeom.<stage>`.
import os
import signal

from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless the user names their own config with --configfile
# (Snakemake would otherwise merge the two).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config/config.yaml")


report: "workflow/report/workflow.rst"


# Slurm's warning before a job's time limit (SIGUSR1, which profiles/slurm asks for the fine-tuning) reaches
# every process of the job's step, this Snakemake process among them: it must outlive the signal while the
# training saves its state and stops. Its children inherit the ignore until they handle the signal themselves.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)


include: "workflow/rules/common.smk"
include: "workflow/rules/resume.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


# Tables, merges and figures take seconds: on a cluster they run in this process, not as jobs of their own.
localrules:
    all,
    condition_metrics,
    run_metrics,
    run_overlap,
    accuracy_table,
    lens_table,
    variant_figure,
    model_figures,


if COMPARISON_FIGURES:

    localrules:
        model_comparison,


onstart:
    write_resolved_config()


rule all:
    default_target: True
    input:
        accuracy_table=f"{RESULTS}/tables/accuracy.csv",
        lens_table=f"{RESULTS}/tables/lens.csv",
        metrics=f"{RESULTS}/metrics/all.parquet",
        overlap=f"{RESULTS}/metrics/overlap.parquet",
        # Listed as well so that a dry run shows the whole DAG before the data is sampled (the
        # fine-tuned conditions join the tables once the fine-tuning set's size is known).
        base_metrics=expand(f"{RESULTS}/metrics/{{model}}/{{condition}}.parquet", model=MODELS, condition=CONDITIONS),
        adapters=expand(
            f"{RESULTS}/finetune/{{model}}/{{method}}/checkpoints.json",
            model=MODELS,
            method=finetune_methods(),
        ),
        figures=expand(f"{RESULTS}/figures/{{model}}/{{name}}.png", model=MODELS, name=FIGURE_NAMES),
        variant_figures=expand(
            f"{RESULTS}/figures/{{model}}/variants_{{shots}}shot.png",
            model=MODELS,
            shots=sorted({k for ks in config["variants"].values() for k in ks}),
        ),
        model_comparison=COMPARISON_FIGURES,
