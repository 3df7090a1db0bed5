# Reporting: the accuracy table and the figures of each model (their captions: workflow/report/).
from repgeom.plots import FIGURE_LABELS


rule accuracy_table:
    input:
        lambda wc: [
            f"{RESULTS}/extract/{model}/{condition}.accuracy.parquet"
            for model in MODELS
            for condition in conditions(model)
        ],
    output:
        f"{RESULTS}/tables/accuracy.csv",
    params:
        provenance=provenance("accuracy_table", []),
    threads: job_threads("accuracy_table")
    resources:
        **job_resources("accuracy_table"),
    log:
        f"{RESULTS}/logs/accuracy_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/accuracy_table.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.plots accuracy-table --out {output} {input} > {log} 2>&1"


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
    params:
        provenance=provenance("variant_figure", []),
    threads: job_threads("plot")
    resources:
        **job_resources("plot"),
    log:
        f"{RESULTS}/logs/variant_figure/{{model}}/{{shots}}shot.log",
    benchmark:
        f"{RESULTS}/benchmarks/variant_figure/{{model}}/{{shots}}shot.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.plots variant-ari --metrics {input} --model {wildcards.model}"
        " --shots {wildcards.shots} --out {output} > {log} 2>&1"


rule model_figures:
    input:
        metrics=rules.run_metrics.output[0],
        overlap=rules.run_overlap.output[0],
        accuracy=rules.accuracy_table.output[0],
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
    params:
        provenance=provenance("model_figures", ['analysis.params', 'shots', 'variants', 'finetune']),
        out_dir=lambda wc: f"{RESULTS}/figures/{wc.model}",
        checkpoints=lambda wc: " ".join(f"{method}={path}" for method, path in sorted(training_runs(wc.model).items())),
        settings=as_json(config["analysis"]["params"]),
    threads: job_threads("plot")
    resources:
        **job_resources("plot"),
    log:
        f"{RESULTS}/logs/model_figures/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/model_figures/{{model}}.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.plots figures --metrics {input.metrics} --overlap {input.overlap}"
        " --accuracy {input.accuracy} --checkpoints {params.checkpoints}"
        " --settings-json {params.settings:q} --model {wildcards.model}"
        " --out-dir {params.out_dir} > {log} 2>&1"
