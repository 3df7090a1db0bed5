"""The cost model's parts on hand-made inputs: the DAG read from a dry run, the fine-tuned conditions added before
sampling, list scheduling, FLOP counts and parameter counts against real models, and calibration's fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from repgeom.costs import calibrate, flops
from repgeom.costs.architecture import Architecture, model_architecture
from repgeom.costs.dag import Job, parse_dry_run, with_finetuned_conditions
from repgeom.costs.estimate import Estimate, load_constants, per_rule
from repgeom.costs.schedule import Cluster, list_schedule, misfits
from repgeom.errors import InputError

DRY_RUN = """\
Building DAG of jobs...
rule import_model:
    output: r/models/m
    jobid: 3
    benchmark: r/benchmarks/import_model/m.tsv
    wildcards: model=m
    resources: tmpdir=/tmp, gpu=0, cpus_per_task=1, runtime=20, nodes=1, mem_mb=4000
checkpoint sample:
    output: r/data/questions.parquet, r/data/finetune_set.parquet
    jobid: 2
    resources: tmpdir=/tmp, gpu=0, cpus_per_task=1
rule prompts:
    input: r/data/questions.parquet, r/models/m
    output: r/prompts/m/0shot.parquet
    jobid: 5
    wildcards: model=m, condition=0shot
rule finetune:
    input: r/data/finetune_set.parquet, r/models/m
    output: r/finetune/m/lora/checkpoints.json
    jobid: 6
    wildcards: model=m, method=lora
    resources: tmpdir=/tmp, gpu=2, cpus_per_task=8, runtime=30, nodes=1, mem_mb=6000
rule extract:
    input: r/prompts/m/0shot.parquet, r/models/m
    output: r/extract/m/0shot.accuracy.parquet
    jobid: 7
    benchmark: r/benchmarks/extract/m/0shot.tsv
    wildcards: model=m, condition=0shot
    resources: tmpdir=/tmp, gpu=1, cpus_per_task=4, runtime=30, nodes=1, mem_mb=4000
rule analyze_layers:
    input: r/extract/m/0shot.accuracy.parquet
    output: r/metrics/m/0shot/layers_0-3.parquet, r/neighbors/m/0shot/layers_0-3.zarr
    jobid: 8
    wildcards: model=m, condition=0shot, layers=0-3
rule data_overlap:
    input: <TBD>
    output: r/metrics/m/overlap.parquet
    jobid: 9
    wildcards: model=m
localrule all:
    input: r/metrics/m/overlap.parquet
    jobid: 0
"""


def jobs_by_id(jobs):
    return {job.jobid: job for job in jobs}


def test_dry_run_jobs_depend_on_the_jobs_writing_their_inputs():
    jobs = jobs_by_id(parse_dry_run(DRY_RUN, local=["condition_metrics"]))
    assert jobs["5"].deps == {"2", "3"}  # a file of the checkpoint's and the model folder
    assert jobs["7"].deps == {"5", "3"}
    assert jobs["7"].gpus == 1 and jobs["7"].cpus == 4 and jobs["7"].resources["mem_mb"] == 4000
    assert jobs["7"].benchmark == "r/benchmarks/extract/m/0shot.tsv"
    assert jobs["0"].local and not jobs["7"].local
    # Inputs known only after the checkpoint: everything not waiting for the job itself.
    assert jobs["9"].deps == {"2", "3", "5", "6", "7", "8"}


def test_fine_tuned_conditions_copy_the_zero_shot_jobs_and_wait_for_their_training():
    jobs = jobs_by_id(with_finetuned_conditions(parse_dry_run(DRY_RUN), {"ft-lora-step1": "lora"}))
    extract, analysis = jobs["7:ft-lora-step1"], jobs["8:ft-lora-step1"]
    assert extract.wildcards == {"model": "m", "condition": "ft-lora-step1"}
    assert extract.deps == {"5", "3", "6"}  # the 0-shot prompts, the model, the training run
    assert analysis.deps == {"7:ft-lora-step1"}
    assert extract.benchmark == "r/benchmarks/extract/m/ft-lora-step1.tsv"
    assert "5:ft-lora-step1" not in jobs  # prompts are shared
    assert {"7:ft-lora-step1", "8:ft-lora-step1"} <= jobs["9"].deps


def chain(*specs):
    """Jobs named by (id, gpus, deps)."""
    return [Job(jobid=i, rule="r", wildcards={"n": i}, resources={"gpu": g, "cpus_per_task": 1},
                outputs=(i,), deps=frozenset(d)) for i, g, d in specs]


def test_list_schedule_respects_dependencies_and_gpus_per_node():
    jobs = chain(("a", 0, ()), ("b", 2, ("a",)), ("c", 2, ("a",)), ("d", 1, ("b", "c")))
    seconds = {"a": 10, "b": 100, "c": 50, "d": 5}
    one_node = list_schedule(jobs, seconds, Cluster(1, 2, 8))
    assert one_node.makespan_s == 10 + 100 + 50 + 5          # b and c cannot share a 2-GPU node
    assert one_node.start["b"] == 10 and one_node.start["c"] == 110  # the longer chain first
    two_nodes = list_schedule(jobs, seconds, Cluster(2, 2, 8))
    assert two_nodes.makespan_s == 10 + 100 + 5
    assert {two_nodes.node["b"], two_nodes.node["c"]} == {0, 1}


def test_a_job_no_node_can_hold_is_named():
    jobs = chain(("x", 5, ()))
    assert misfits(jobs, Cluster(4, 1, 16)) == ["r[n=x] needs 5 GPUs on one node, but the cluster's nodes have 1"]
    with pytest.raises(InputError, match="needs 5 GPUs"):
        list_schedule(jobs, {"x": 1}, Cluster(4, 1, 16))


@pytest.mark.parametrize("spec, expected", [("4x8", Cluster(4, 8, 128)), ("1x0:2", Cluster(1, 0, 2)),
                                            ("2 x 4:64", Cluster(2, 4, 64))])
def test_cluster_spec(spec, expected):
    assert Cluster.parse(spec, default_cpus=2) == expected


def test_bad_cluster_spec_is_one_line():
    with pytest.raises(InputError, match=r"--cluster '8': give NODESxGPUS_PER_NODE"):
        Cluster.parse("8", 2)


def test_parameter_count_matches_a_real_model():
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    arch = Architecture.from_hf_config(config)
    assert arch.n_params == LlamaForCausalLM(config).num_parameters()


def test_published_shapes_give_the_known_sizes():
    sizes = {hub: model_architecture("m", {"hub": hub, "num_layers": 1}).n_params / 1e9
             for hub in ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B", "mistralai/Mistral-7B-v0.1")}
    assert sizes == pytest.approx({"meta-llama/Meta-Llama-3-8B": 8.03, "meta-llama/Meta-Llama-3-70B": 70.55,
                                   "mistralai/Mistral-7B-v0.1": 7.24}, abs=0.01)


def test_unknown_hub_model_is_one_line_naming_the_key():
    with pytest.raises(InputError, match=r"models\.big\.hub: 'org/unknown' is not among the published shapes"):
        model_architecture("big", {"hub": "org/unknown", "num_layers": 2})


def test_forward_flops_match_torch_flop_counter():
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 512, (1, 48)))
    # The counter takes full (non-causal) attention products: 2 x 2 x D per token pair and layer.
    counted = counter.get_total_flops() - 4 * 2 * 64 * (48 * 48 - 48 * 49 / 2)
    assert flops.forward_flops(Architecture.from_hf_config(config), [48]) == pytest.approx(counted, rel=0.01)


def estimate(jobid, rule, fixed, variable, key=("devices", "cpu", "knn_flops_per_s")):
    job = Job(jobid=jobid, rule=rule, wildcards={}, resources={}, outputs=("o",))
    return Estimate(job, "cpu", fixed, 0, 0, 100, variable_s=variable, rate_keys=(key,))


def test_calibration_fits_start_up_and_rates_to_measured_times():
    constants = load_constants()
    old_rate = constants["devices"]["cpu"]["knn_flops_per_s"]["value"]
    startup = per_rule(constants, "startup_s", "analyze_layers")
    # Measured: 3 s start-up and twice the planned work time; 40 bytes more than planned per job.
    variable = np.array([10.0, 20.0, 40.0])
    estimates = [estimate(str(i), "analyze_layers", startup, v) for i, v in enumerate(variable)]
    measured = {str(i): calibrate.Measured(3.0 + 2 * v, 140) for i, v in enumerate(variable)}
    fitted = calibrate.fit_constants(constants, estimates, measured, "test")
    assert fitted["devices"]["cpu"]["knn_flops_per_s"]["value"] == pytest.approx(old_rate / 2, rel=1e-3)
    assert fitted["startup_s"]["analyze_layers"]["value"] == pytest.approx(3.0, abs=0.01)
    assert fitted["fixed_bytes"]["analyze_layers"]["value"] == 40
    # Start-up dominated: the rate is left as it was.
    key = ("devices", "cpu", "forward_flops_per_s", "float32")
    small = [estimate("s", "prompts", per_rule(constants, "startup_s", "prompts"), 0.01, key)]
    refit = calibrate.fit_constants(constants, small, {"s": calibrate.Measured(4.0, 100)}, "test")
    assert refit["devices"]["cpu"]["forward_flops_per_s"] == constants["devices"]["cpu"]["forward_flops_per_s"]
    assert refit["startup_s"]["prompts"]["value"] == pytest.approx(4.0 - 0.01, abs=0.01)


def test_jobs_over_what_they_ask_for_are_warned_and_gpus_too_small_are_errors():
    from repgeom.costs.cli import job_warnings

    constants = load_constants()
    asked = {"runtime": 10, "mem_mb": 4000}
    slow = Estimate(Job("1", "extract", {"condition": "0shot"}, {**asked, "gpu": 0}, outputs=("o",)), "cpu",
                    fixed_s=700, host_mb=5000, gpu_mb=0, bytes_written=0)
    big = Estimate(Job("2", "finetune", {"method": "lora"}, {**asked, "gpu": 1}, outputs=("o",)), "a100-40gb",
                   fixed_s=60, host_mb=100, gpu_mb=50_000, bytes_written=0)
    fine = Estimate(Job("3", "sample", {}, asked, outputs=("o",)), "cpu", fixed_s=1, host_mb=100, gpu_mb=0,
                    bytes_written=0)
    errors, warnings = job_warnings([slow, big, fine], constants)
    assert warnings == ["extract[condition=0shot]: estimated 12 min, over the 10 min it asks for",
                        "extract[condition=0shot]: estimated peak memory 5,000 MB, over the 4,000 MB it asks for"]
    assert errors == ["finetune[method=lora] needs 52 GB on each of its 1 GPU(s) (weights and activations), but one "
                      "a100-40gb GPU has 40 GB"]
