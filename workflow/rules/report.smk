# Reporting: the accuracy and logit-lens tables, the figures of each model and, with two or more models, the
# figures across models (their captions: workflow/report/).
from pathlib import Path

from repgeom.plots import COMPARISON_LABELS, COMPARISON_NAMES, FIGURE_LABELS
from repgeom.workflow.captions import caption_values
from repgeom.workflow.plan import compared_conditions


rule accuracy_table:
    input:
        lambda wc: [
            f"{RESULTS}/extract/{model}/{condition}.accuracy.parquet"
            for model in MODELS
            for condition in conditions(model)
        ],
    output:
        f"{RESULTS}/tables/accuracy.csv",
    log:
        f"{RESULTS}/logs/accuracy_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/accuracy_table.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("accuracy_table")
    resources:
        **job_resources("accuracy_table"),
    params:
        provenance=provenance("accuracy_table", []),
    shell:
        f"{TRACKED} -- " "python -m repgeom.plots accuracy-table --out {output} {input} > {log} 2>&1"


rule lens_table:
    input:
        lambda wc: [
            f"{RESULTS}/extract/{model}/{condition}.lens.parquet"
            for model in MODELS
            for condition in conditions(model)
        ],
    output:
        f"{RESULTS}/tables/lens.csv",
    log:
        f"{RESULTS}/logs/lens_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/lens_table.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("lens_table")
    resources:
        **job_resources("lens_table"),
    params:
        provenance=provenance("lens_table", []),
    shell:
        f"{TRACKED} -- " "python -m repgeom.plots lens-table --out {output} {input} > {log} 2>&1"


rule variant_figure:
    input:
        rules.run_metrics.output,
    output:
        report(
            f"{RESULTS}/figures/{{model}}/variants_{{shots}}shot.png",
            caption="../report/variants.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "prompt controls, {shots}-shot"},
        ),
    log:
        f"{RESULTS}/logs/variant_figure/{{model}}/{{shots}}shot.log",
    benchmark:
        f"{RESULTS}/benchmarks/variant_figure/{{model}}/{{shots}}shot.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("plot")
    resources:
        **job_resources("plot"),
    params:
        provenance=provenance("variant_figure", []),
        caption=caption_values(config),
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.plots variant-ari --metrics {input} --model {wildcards.model}"
        " --shots {wildcards.shots} --out {output} > {log} 2>&1"


rule model_figures:
    input:
        metrics=rules.run_metrics.output[0],
        overlap=rules.run_overlap.output[0],
        accuracy=rules.accuracy_table.output[0],
        lens=rules.lens_table.output[0],
        # Each training run's {checkpoint: step}.
        checkpoints=lambda wc: training_runs(wc.model).values(),
    output:
        **{
            name: report(
                f"{RESULTS}/figures/{{model}}/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
                subcategory="{model}",
                labels={"model": "{model}", "figure": FIGURE_LABELS[name]},
            )
            for name in FIGURE_NAMES
        },
    log:
        f"{RESULTS}/logs/model_figures/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/model_figures/{{model}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("plot")
    resources:
        **job_resources("plot"),
    params:
        provenance=provenance("model_figures", ["analysis.params", "shots", "variants", "finetune"]),
        out_dir=lambda wc: f"{RESULTS}/figures/{wc.model}",
        checkpoints=lambda wc: " ".join(f"{method}={path}" for method, path in sorted(training_runs(wc.model).items())),
        settings=as_json(config["analysis"]["params"]),
        caption=caption_values(config),
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.plots figures --metrics {input.metrics} --overlap {input.overlap}"
        " --accuracy {input.accuracy} --lens {input.lens} --checkpoints {params.checkpoints}"
        " --settings-json {params.settings:q} --model {wildcards.model}"
        " --out-dir {params.out_dir} > {log} 2>&1"


# Figures across models: `rule all` asks for these, none with a single model.
COMPARISON_FIGURES = [f"{RESULTS}/figures/{name}.png" for name in COMPARISON_NAMES] if len(MODELS) > 1 else []
# By default the fewest and the most shots and each fine-tuning method's last checkpoint (checked with the config).
COMPARED_CONDITIONS = compared_conditions(config)

if COMPARISON_FIGURES:

    rule model_comparison:
        input:
            metrics=rules.run_metrics.output[0],
            lens=rules.lens_table.output[0],
            # Each model's training runs' {checkpoint: step}, for ft-{method}-last.
            checkpoints=[path for model in MODELS for path in training_runs(model).values()],
        output:
            **{
                name: report(
                    f"{RESULTS}/figures/{name}.png",
                    caption="../report/model_comparison.rst",
                    category="Figures across models",
                    labels={"figure": COMPARISON_LABELS[name]},
                )
                for name in COMPARISON_NAMES
            },
        log:
            f"{RESULTS}/logs/model_comparison.log",
        benchmark:
            f"{RESULTS}/benchmarks/model_comparison.tsv"
        conda:
            "../envs/analysis.yaml"
        threads: job_threads("plot")
        resources:
            **job_resources("plot"),
        params:
            provenance=provenance("model_comparison", ["model_comparison", "shots", "finetune", "analysis.params"]),
            models=MODELS,
            conditions=COMPARED_CONDITIONS,
            checkpoints=[
                f"{model}:{method}={path}" for model in MODELS for method, path in sorted(training_runs(model).items())
            ],
            settings=as_json(config["analysis"]["params"]),
            out_dir=lambda wc, output: Path(output[0]).parent,
            caption=caption_values(config),
        shell:
            f"{TRACKED} -- "
            "python -m repgeom.plots compare-models --metrics {input.metrics} --lens {input.lens}"
            " --models {params.models} --conditions {params.conditions} --checkpoints {params.checkpoints}"
            " --settings-json {params.settings:q} --out-dir {params.out_dir} > {log} 2>&1"
