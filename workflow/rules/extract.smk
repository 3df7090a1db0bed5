rule extract:
    input:
        prompts=prompts_file,
        model=model_input,
        adapters=adapter_run,
    output:
        # The zarr group is written in place and left undeclared, so that a killed job resumes
        # from its completed chunks instead of Snakemake deleting them; the accuracy table comes last.
        lens=f"{RESULTS}/extract/{{model}}/{{condition}}.lens.parquet",
        accuracy=f"{RESULTS}/extract/{{model}}/{{condition}}.accuracy.parquet",
    log:
        f"{RESULTS}/logs/extract/{{model}}/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{model}}/{{condition}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: job_threads("extract")
    resources:
        **job_resources("extract"),
    params:
        provenance=provenance("extract", ["extraction", "models.{model}"], ["sampling.seed"]),
        store=STORE,
        model=lambda wc: model_spec(wc.model),
        max_length=lambda wc: config["models"][wc.model]["max_length"],
        hook=config["extraction"]["hook"],
        store_dtype=config["extraction"]["store_dtype"],
        model_dtype=config["extraction"]["model_dtype"],
        max_batch_tokens=config["extraction"]["max_batch_tokens"],
        min_shared_prefix=config["extraction"]["min_shared_prefix"],
        chunk_rows=f"--chunk-rows {config['extraction']['chunk_rows']}" if "chunk_rows" in config["extraction"] else "",
        adapter=lambda wc: option("--adapter", adapter_folder(wc)),
        # From the hardware map, not resources.gpu, which a cluster's profile may replace by a `gres` string.
        parallel=lambda wc: extraction_parallel_option(
            extraction_parallel(config, wc.model), JOBS.gpus("extract", wc.model)
        ),
        ranks=lambda wc: extraction_ranks(extraction_parallel(config, wc.model), JOBS.gpus("extract", wc.model)),
        token_sample=token_sample_option(config),
        group=store_group,
        adapter_input=lambda wc: option("--extra-inputs", adapter_folder(wc)),
    shell:
        f"{TRACKED} --extra-outputs {{params.group}} {{params.adapter_input}} -- "
        "python -m repgeom.launch --gpus {params.ranks} --cpus {threads} --"
        " python -m repgeom.extract --model {params.model:q} --prompts {input.prompts} {params.adapter}"
        " --store {params.store} --group {wildcards.model}/{wildcards.condition}"
        " --lens-out {output.lens} --accuracy-out {output.accuracy} --hook {params.hook}"
        " --store-dtype {params.store_dtype} --model-dtype {params.model_dtype}"
        " --max-batch-tokens {params.max_batch_tokens} --min-shared-prefix {params.min_shared_prefix} --max-length {params.max_length} {params.chunk_rows}"
        " {params.token_sample} {params.parallel} --wait-for-lock > {log} 2>&1"
