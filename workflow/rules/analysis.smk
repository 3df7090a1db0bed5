rule analyze_layers:
    input:
        extracted=f"{RESULTS}/extract/{{model}}/{{condition}}.accuracy.parquet",
    output:
        metrics=f"{RESULTS}/metrics/{{model}}/{{condition}}/layers_{{layers}}.parquet",
        # Each layer's neighbours, kept for the data overlap (src/repgeom/analysis/neighbor_artifact.py).
        neighbors=directory(f"{RESULTS}/neighbors/{{model}}/{{condition}}/layers_{{layers}}.zarr"),
    log:
        f"{RESULTS}/logs/analyze/{{model}}/{{condition}}/layers_{{layers}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{model}}/{{condition}}/layers_{{layers}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("analyze")
    resources:
        **job_resources("analyze"),
    params:
        provenance=provenance("analyze_layers", ["analysis.params"], ["analysis.params.seed"]),
        store=STORE,
        group=store_group,
        analysis=as_json(config["analysis"]["params"]),
        # The kNN runs where the hardware map puts the job: a job sized `gpus: 0` stays off the GPUs.
        device=lambda wc: job_device(JOBS.gpus("analyze", wc.model)),
    shell:
        f"{TRACKED} --extra-inputs {{params.group}} -- "
        "python -m repgeom.analysis layers --store {params.store} --group {wildcards.model}/{wildcards.condition}"
        " --layers {wildcards.layers} --params-json {params.analysis:q} --threads {threads} --device {params.device}"
        " --out {output.metrics} --neighbors-out {output.neighbors} > {log} 2>&1"


rule condition_metrics:
    input:
        lambda wc: expand(
            f"{RESULTS}/metrics/{wc.model}/{wc.condition}/layers_{{layers}}.parquet",
            layers=analysis_blocks(wc.model),
        ),
    output:
        f"{RESULTS}/metrics/{{model}}/{{condition}}.parquet",
    log:
        f"{RESULTS}/logs/condition_metrics/{{model}}/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/condition_metrics/{{model}}/{{condition}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("merge")
    resources:
        **job_resources("merge"),
    params:
        provenance=provenance("condition_metrics", []),
    shell:
        f"{TRACKED} -- " "python -m repgeom.plots concat --out {output} {input} > {log} 2>&1"


rule data_overlap:
    # Reads the neighbours each condition's analysis kept; the store only for pairs those cannot serve.
    input:
        lambda wc: expand(
            f"{RESULTS}/neighbors/{wc.model}/{{condition}}/layers_{{layers}}.zarr",
            condition=conditions(wc.model),
            layers=analysis_blocks(wc.model),
        ),
    output:
        f"{RESULTS}/metrics/{{model}}/overlap.parquet",
    log:
        f"{RESULTS}/logs/data_overlap/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data_overlap/{{model}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("analyze")
    resources:
        **job_resources("analyze"),
    params:
        provenance=provenance("data_overlap", ["analysis.params.overlap_k"]),
        store=STORE,
        groups=lambda wc: " ".join(f"{wc.model}/{condition}" for condition in conditions(wc.model)),
        group_paths=lambda wc: " ".join(f"{STORE}/{wc.model}/{condition}" for condition in conditions(wc.model)),
        k=config["analysis"]["params"]["overlap_k"],
        device=lambda wc: job_device(JOBS.gpus("analyze", wc.model)),
    shell:
        f"{TRACKED} --extra-inputs {{params.group_paths}} -- "
        "python -m repgeom.analysis overlap --store {params.store} --groups {params.groups} --neighbors {input}"
        " --k {params.k} --threads {threads} --device {params.device} --out {output} > {log} 2>&1"


rule run_metrics:
    input:
        lambda wc: [
            f"{RESULTS}/metrics/{model}/{condition}.parquet" for model in MODELS for condition in conditions(model)
        ],
    output:
        f"{RESULTS}/metrics/all.parquet",
    log:
        f"{RESULTS}/logs/run_metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/run_metrics.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("merge")
    resources:
        **job_resources("merge"),
    params:
        provenance=provenance("run_metrics", []),
    shell:
        f"{TRACKED} -- " "python -m repgeom.plots concat --out {output} {input} > {log} 2>&1"


rule run_overlap:
    input:
        expand(f"{RESULTS}/metrics/{{model}}/overlap.parquet", model=MODELS),
    output:
        f"{RESULTS}/metrics/overlap.parquet",
    log:
        f"{RESULTS}/logs/run_overlap.log",
    benchmark:
        f"{RESULTS}/benchmarks/run_overlap.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: job_threads("merge")
    resources:
        **job_resources("merge"),
    params:
        provenance=provenance("run_overlap", []),
    shell:
        f"{TRACKED} -- " "python -m repgeom.plots concat --out {output} {input} > {log} 2>&1"
