rule build_model:
    input:
        dataset=DATASET_FOLDER or [],
    output:
        model=directory(f"{RESULTS}/models/{{model}}"),
        history=f"{RESULTS}/models/{{model}}.pretrain_log.parquet",
    log:
        f"{RESULTS}/logs/build_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_model/{{model}}.tsv"
    wildcard_constraints:
        model=models_pattern(config, "build"),
    conda:
        "../envs/torch.yaml"
    threads: job_threads("build_model")
    resources:
        **job_resources("build_model"),
    params:
        provenance=provenance("build_model", ["models.{model}.build"], ["models.{model}.build.seed"]),
        corpus=f"{DATASET_FOLDER}/pretrain_corpus.json",
        build=lambda wc: as_json(config["models"][wc.model]["build"]),
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.models build --corpus {params.corpus} --params-json {params.build:q}"
        " --out {output.model} --log-out {output.history} > {log} 2>&1"


rule import_model:
    input:
        gguf=lambda wc: config["models"][wc.model]["gguf"].get("path", []),
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{RESULTS}/logs/import_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/import_model/{{model}}.tsv"
    wildcard_constraints:
        model=models_pattern(config, "gguf"),
    conda:
        "../envs/torch.yaml"
    threads: job_threads("import_model")
    resources:
        **job_resources("import_model"),
    params:
        provenance=provenance(
            "import_model", ["models.{model}.gguf"], params=lambda wc: gguf_source(config["models"][wc.model])
        ),
        # The shipping package's version, not the file's path inside it: a new release of the package
        # re-imports, a checkout with its virtual environment elsewhere does not.
        source=lambda wc: as_json(gguf_source(config["models"][wc.model])),
    shell:
        f"{TRACKED} -- " "python -m repgeom.models import --source-json {params.source:q} --out {output} > {log} 2>&1"
