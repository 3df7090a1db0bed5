rule finetune:
    input:
        train=rules.sample.output.finetune,
        model=model_input,
    output:
        # The run's folder (adapters, log, resumable state) is written in place and left undeclared,
        # so that a killed run resumes instead of Snakemake deleting it; this list comes last. A run of
        # other settings (Snakemake re-runs the job when they change) is started over.
        f"{RESULTS}/finetune/{{model}}/{{method}}/checkpoints.json",
    log:
        f"{RESULTS}/logs/finetune/{{model}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{model}}/{{method}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: job_threads("finetune")
    resources:
        **job_resources("finetune"),
        # A resource, not a param: how often the run saves its state changes no result, so no re-run.
        state_every_minutes=lambda wc: config["finetune"]["state_every_minutes"],
    params:
        provenance=provenance(
            "finetune",
            [
                "finetune.size_class",
                "finetune.deepspeed",
                "finetune.model_dtype",
                "finetune.methods.{method}",
                "models.{model}",
            ],
            ["finetune.methods.{method}.seed"],
            lambda wc: finetune_params(wc.method),
        ),
        out=lambda wc: finetune_folder(wc.model, wc.method),
        model=lambda wc: model_spec(wc.model),
        params=lambda wc: as_json(finetune_params(wc.method)),
        deepspeed=lambda wc: config["finetune"]["deepspeed"],
        model_dtype=lambda wc: config["finetune"]["model_dtype"],
        gpus=lambda wc: JOBS.gpus("finetune", wc.model),
    shell:
        f"{TRACKED} --extra-output-globs '{{params.out}}/checkpoints/*' -- "
        "python -m repgeom.launch --gpus {params.gpus} --cpus {threads} --"
        " python -m repgeom.finetune --model {params.model:q} --train {input.train} --out {params.out}"
        " --params-json {params.params:q} --deepspeed {params.deepspeed:q} --model-dtype {params.model_dtype}"
        " --state-every-minutes {resources.state_every_minutes} --restart-if-changed --wait-for-lock"
        " > {log} 2>&1"
