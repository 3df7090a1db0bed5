rule build_model:
    input:
        dataset=dataset_folder() or [],
    output:
        model=directory(f"{RESULTS}/models/{{model}}"),
        history=f"{RESULTS}/models/{{model}}.pretrain_log.parquet",
    params:
        provenance=provenance("build_model", ['models.{model}.build'], ['models.{model}.build.seed']),
        corpus=lambda wc: f"{dataset_folder()}/pretrain_corpus.json",
        build=lambda wc: as_json(config["models"][wc.model]["build"]),
    threads: job_threads("build_model")
    resources:
        **job_resources("build_model"),
    log:
        f"{RESULTS}/logs/build_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_model/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.models build --corpus {params.corpus} --params-json {params.build:q}"
        " --out {output.model} --log-out {output.history} > {log} 2>&1"
