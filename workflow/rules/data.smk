if DATASET_FOLDER:

    rule generate_dataset:
        output:
            directory(DATASET_FOLDER),
        log:
            f"{RESULTS}/logs/generate_dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/generate_dataset.tsv"
        conda:
            "../envs/data.yaml"
        threads: job_threads("generate_dataset")
        resources:
            **job_resources("generate_dataset"),
        params:
            provenance=provenance("generate_dataset", ["dataset.generate"], ["dataset.generate.seed"]),
            generate=as_json(config["dataset"].get("generate", {})),
        shell:
            f"{TRACKED} -- "
            "python -m repgeom.data generate --out {output} --params-json {params.generate:q} > {log} 2>&1"


checkpoint sample:
    input:
        dataset=DATASET_FOLDER or [],
        # An input, so that a changed mask re-runs the job and its record holds the mask's hash; the path is
        # passed on as the config gives it.
        subset_mask=config["sampling"].get("subset_mask", []),
    output:
        questions=f"{RESULTS}/data/questions.parquet",
        subset=f"{RESULTS}/data/analysis_subset.parquet",
        finetune=f"{RESULTS}/data/finetune_set.parquet",
    log:
        f"{RESULTS}/logs/sample.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample.tsv"
    conda:
        "../envs/data.yaml"
    threads: job_threads("sample")
    resources:
        **job_resources("sample"),
    params:
        provenance=provenance("sample", ["dataset", "sampling", "variants"], ["sampling.seed"]),
        dataset=as_json(DATASET_SPEC),
        max_per_subject=config["sampling"]["max_per_subject"],
        finetune_max_per_subject=config["sampling"]["finetune_max_per_subject"],
        seed=config["sampling"]["seed"],
        hold_out="--hold-out-shot-pool" if "sampled_shots" in config["variants"] else "",
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.data sample --dataset-json {params.dataset:q}"
        " --max-per-subject {params.max_per_subject}"
        " --finetune-max-per-subject {params.finetune_max_per_subject}"
        " --seed {params.seed} {params.hold_out}"
        + (" --subset-mask {input.subset_mask:q}" if "subset_mask" in config["sampling"] else "")
        + " --questions-out {output.questions} --subset-out {output.subset} --finetune-out {output.finetune}"
        " > {log} 2>&1"


rule prompts:
    input:
        questions=rules.sample.output.questions,
        subset=rules.sample.output.subset,
        model=model_input,
    output:
        f"{RESULTS}/prompts/{{model}}/{{condition}}.parquet",
    log:
        f"{RESULTS}/logs/prompts/{{model}}/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prompts/{{model}}/{{condition}}.tsv"
    conda:
        "../envs/data.yaml"
    threads: job_threads("prompts")
    resources:
        **job_resources("prompts"),
    params:
        provenance=provenance(
            "prompts", ["sampling.seed", "models.{model}.max_length", "dataset.subject_areas"], ["sampling.seed"]
        ),
        options=lambda wc: prompt_options(config, wc.condition, SUBJECT_AREAS),
        tokenizer=lambda wc: model_spec(wc.model),
        max_length=lambda wc: config["models"][wc.model]["max_length"],
    shell:
        f"{TRACKED} -- "
        "python -m repgeom.data prompts --questions {input.questions} --subset {input.subset}"
        " {params.options} --tokenizer {params.tokenizer:q} --max-length {params.max_length}"
        " --out {output} > {log} 2>&1"
