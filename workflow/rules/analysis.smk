rule analyze_layers:
    input:
        extracted=f"{RESULTS}/extract/{{model}}/{{condition}}.accuracy.parquet",
    output:
        f"{RESULTS}/metrics/{{model}}/{{condition}}/layers_{{layers}}.parquet",
    params:
        store=f"{RESULTS}/activations.zarr",
        analysis=as_json(config["analysis"]["params"]),
    threads: job_threads("analyze")
    resources:
        **job_resources("analyze"),
    log:
        f"{RESULTS}/logs/analyze/{{model}}/{{condition}}/layers_{{layers}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{model}}/{{condition}}/layers_{{layers}}.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m repgeom.analysis layers --store {params.store} --group {wildcards.model}/{wildcards.condition}"
        " --layers {wildcards.layers} --params-json {params.analysis:q} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule condition_metrics:
    input:
        lambda wc: expand(
            f"{RESULTS}/metrics/{wc.model}/{wc.condition}/layers_{{layers}}.parquet",
            layers=layer_blocks(wc.model),
        ),
    output:
        f"{RESULTS}/metrics/{{model}}/{{condition}}.parquet",
    threads: job_threads("merge")
    resources:
        **job_resources("merge"),
    log:
        f"{RESULTS}/logs/condition_metrics/{{model}}/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/condition_metrics/{{model}}/{{condition}}.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m repgeom.plots concat --out {output} {input} > {log} 2>&1"


rule data_overlap:
    input:
        lambda wc: expand(
            f"{RESULTS}/extract/{wc.model}/{{condition}}.accuracy.parquet", condition=conditions(wc.model)
        ),
    output:
        f"{RESULTS}/metrics/{{model}}/overlap.parquet",
    params:
        store=f"{RESULTS}/activations.zarr",
        groups=lambda wc, input: " ".join(
            f"{wc.model}/{Path(path).name.removesuffix('.accuracy.parquet')}" for path in input
        ),
        k=config["analysis"]["params"].get("overlap_k", 30),
    threads: job_threads("analyze")
    resources:
        **job_resources("analyze"),
    log:
        f"{RESULTS}/logs/data_overlap/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data_overlap/{{model}}.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m repgeom.analysis overlap --store {params.store} --groups {params.groups}"
        " --k {params.k} --threads {threads} --out {output} > {log} 2>&1"


rule run_metrics:
    input:
        lambda wc: [
            f"{RESULTS}/metrics/{model}/{condition}.parquet" for model in MODELS for condition in conditions(model)
        ],
    output:
        f"{RESULTS}/metrics/all.parquet",
    threads: job_threads("merge")
    resources:
        **job_resources("merge"),
    log:
        f"{RESULTS}/logs/run_metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/run_metrics.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m repgeom.plots concat --out {output} {input} > {log} 2>&1"


rule run_overlap:
    input:
        expand(f"{RESULTS}/metrics/{{model}}/overlap.parquet", model=MODELS),
    output:
        f"{RESULTS}/metrics/overlap.parquet",
    threads: job_threads("merge")
    resources:
        **job_resources("merge"),
    log:
        f"{RESULTS}/logs/run_overlap.log",
    benchmark:
        f"{RESULTS}/benchmarks/run_overlap.tsv"
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m repgeom.plots concat --out {output} {input} > {log} 2>&1"


rule variant_figure:
    input:
        rules.run_metrics.output,
    output:
        f"{RESULTS}/figures/{{model}}/variants_{{shots}}shot.png",
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
        "python -m repgeom.plots variant-ari --metrics {input} --model {wildcards.model}"
        " --shots {wildcards.shots} --out {output} > {log} 2>&1"
