"""The config's hardware map -> each job's Slurm request, without a cluster: dry runs of the paper configs, the
partition/account choice, the profiles, and the sbatch line snakemake-executor-plugin-slurm builds from them."""
from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
import yte
from helpers import run_snakemake, snakemake_env

ROOT = Path(__file__).resolve().parents[2]
PAPER_8B, PAPER_70B = ROOT / "config/paper_llama3_8b.yaml", ROOT / "config/paper_llama3_70b.yaml"


def dry_run(tmp_path, configfile: Path | None, *extra: str, env: dict | None = None) -> list[dict]:
    args = ["--configfile", str(configfile)] if configfile else []
    environment = snakemake_env({k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **(env or {}))
    result = run_snakemake("--dry-run", "--cores", "1", *args, *extra, workdir=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs, job = [], None
    for line in (result.stdout + result.stderr).splitlines():
        header = re.fullmatch(r"(?:local)?(?:rule|checkpoint) (\S+):", line)
        if header:
            job = {"rule": header.group(1), "resources": {}}
            jobs.append(job)
        elif job is not None and line.startswith("    resources: "):
            pairs = (item.split("=", 1) for item in line.split(": ", 1)[1].split(", "))
            job["resources"] = {k: int(v) if v.isdigit() else v for k, v in pairs}
    return [j for j in jobs if "gpu" in j["resources"]]


def hardware_rows(configfile: Path) -> list[tuple]:
    hardware = yaml.safe_load(configfile.read_text())["hardware"]
    specs = list(hardware["jobs"].values()) + [s for m in hardware["models"].values() for s in m.values()]
    return [(s["gpus"], s["cpus"], s["mem_mb"], s["runtime"]) for s in specs]


def asked(job) -> tuple:
    r = job["resources"]
    return r["gpu"], r["cpus_per_task"], r["mem_mb"], r["runtime"]


SLURM = ["--config", "slurm={account: lab, gpu_partition: a100, cpu_partition: cpu}"]


@pytest.mark.parametrize("configfile, model, gpus", [(PAPER_8B, "llama-3-8b", 1), (PAPER_70B, "llama-3-70b", 5)])
def test_paper_extraction_gpus(tmp_path, configfile, model, gpus):
    jobs = dry_run(tmp_path, configfile, *SLURM)
    extract = [j for j in jobs if j["rule"] == "extract"]
    assert extract and all(j["resources"]["gpu"] == gpus for j in extract)
    assert all(j["resources"]["slurm_partition"] == "a100" for j in extract)
    if configfile == PAPER_70B:
        # The reference fine-tunes 70B on 8 GPUs, and the layers of its 5-GPU extraction are sharded.
        finetune = [j for j in jobs if j["rule"] == "finetune"]
        assert finetune and all(j["resources"]["gpu"] == 8 for j in finetune)


@pytest.mark.parametrize("configfile", [None, PAPER_8B, PAPER_70B], ids=["default", "8b", "70b"])
def test_every_job_asks_for_a_row_of_the_hardware_map(tmp_path, configfile):
    """Resources come from the config's map (common.smk), never literals in the rules; GPU jobs go to the GPU
    partition, the others to the CPU partition, all under the configured account."""
    jobs = dry_run(tmp_path, configfile, *SLURM)
    rows = hardware_rows(configfile or ROOT / "config/config.yaml")
    assert jobs
    for job in jobs:
        gpu, cpus, mem, runtime = asked(job)
        assert any((gpu, cpus) == row[:2] for row in rows), job
        assert job["resources"]["slurm_partition"] == ("a100" if gpu else "cpu"), job
        assert job["resources"]["slurm_account"] == "lab", job
    analysis = [j for j in jobs if j["rule"].startswith("analyze")]
    assert analysis and all(j["resources"]["gpu"] == 0 for j in analysis)


def test_partition_and_account_from_the_environment_unless_the_config_names_them(tmp_path):
    env = {"SLURM_ACCOUNT": "envacct", "SLURM_GPU_PARTITION": "envgpu", "SLURM_CPU_PARTITION": "envcpu"}
    jobs = dry_run(tmp_path, PAPER_8B, env=env)
    assert {(j["resources"]["gpu"] > 0, j["resources"]["slurm_partition"]) for j in jobs} == \
        {(True, "envgpu"), (False, "envcpu")}
    assert {j["resources"]["slurm_account"] for j in jobs} == {"envacct"}
    jobs = dry_run(tmp_path, PAPER_8B, "--config", "slurm={gpu_partition: cfg, cpu_partition: '', account: ''}",
                   env=env)
    assert {j["resources"]["slurm_partition"] for j in jobs if j["resources"]["gpu"]} == {"cfg"}
    assert {j["resources"]["slurm_partition"] for j in jobs if not j["resources"]["gpu"]} == {"envcpu"}


def test_no_partition_or_account_leaves_the_cluster_defaults(tmp_path):
    jobs = dry_run(tmp_path, None)
    assert jobs and not any({"slurm_partition", "slurm_account"} & set(j["resources"]) for j in jobs)


def test_memory_and_runtime_grow_with_the_attempt(tmp_path):
    """Attempt n asks for retry_growth**(n-1) times the map's memory and runtime (the cluster test sees the
    retries' sbatch lines grow too)."""
    by_attempt = []
    for attempt in (1, 2, 3):
        (extract, *_) = [j for j in dry_run(tmp_path, PAPER_70B, "--attempt", str(attempt)) if j["rule"] == "extract"]
        by_attempt.append(asked(extract))
    assert by_attempt == [(5, 40, 400000, 480), (5, 40, 600000, 720), (5, 40, 900000, 1080)]


def profile(name: str, env: dict | None = None, monkeypatch=None) -> dict:
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    with open(ROOT / f"profiles/{name}/config.yaml") as f:
        return yte.process_yaml(f, require_use_yte=True)


def test_slurm_profile_settings(monkeypatch):
    for key in ("SLURM_MAX_JOBS", "SLURM_LATENCY_WAIT", "SLURM_RETRIES", "SLURM_STATUS_COMMAND", "SLURM_LOGDIR"):
        monkeypatch.delenv(key, raising=False)
    settings = profile("slurm")
    assert settings["executor"] == "slurm"
    assert (settings["jobs"], settings["latency-wait"], settings["retries"]) == (100, 60, 2)
    assert settings["rerun-incomplete"] is True
    assert settings["default-resources"]["tasks_per_gpu"] == 0
    assert settings["slurm-status-command"] is None
    settings = profile("slurm", {"SLURM_MAX_JOBS": "7", "SLURM_LATENCY_WAIT": "5", "SLURM_RETRIES": "0",
                                 "SLURM_STATUS_COMMAND": "squeue"}, monkeypatch)
    assert (settings["jobs"], settings["latency-wait"], settings["retries"]) == (7, 5, 0)
    assert settings["slurm-status-command"] == "squeue"


def test_local_profile_limits_gpu_jobs_to_the_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.delenv("REPGEOM_GPUS", raising=False)
    settings = profile("local")
    assert settings["resources"]["gpu"] == 3
    assert settings["rerun-incomplete"] is True and "executor" not in settings
    monkeypatch.setenv("REPGEOM_GPUS", "1")
    assert profile("local")["resources"]["gpu"] == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("REPGEOM_GPUS")
    assert profile("local")["resources"]["gpu"] == 0


def test_sbatch_line_for_a_70b_extraction():
    """What snakemake-executor-plugin-slurm submits for the 70B extraction under profiles/slurm: one task with
    all 40 CPUs, 5 GPUs, the memory and time limit of the map, in the GPU partition."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    values = {"gpu": 5, "cpus_per_task": 40, "mem_mb": 400000, "runtime": 480, "tasks_per_gpu": 0,
              "slurm_partition": "a100"}

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(values), threads=40, name="extract", is_group=lambda: False)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule_extract", "account": "-A lab",
              "partition": "-p a100", "workdir": "/work"}
    call = get_submit_command(job, params) + set_gres_string(job)
    assert "--ntasks-per-gpu" not in call and "--ntasks" not in call, "one task: cpus_per_task is the job's total"
    for part in ("--cpus-per-task=40", "--gpus=5", "--mem 400000", "-t 480", "-p a100", "-A lab"):
        assert part in call, (part, call)


GPU_JOBS_SNAKEFILE = """
rule all:
    input: expand("done/{i}.txt", i=range(3))

rule gpu_job:
    output: "done/{i}.txt"
    resources: gpu=1, mem_mb=100
    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"
"""


@pytest.mark.slow
def test_local_profile_never_runs_more_gpu_jobs_than_gpus(tmp_path):
    (tmp_path / "Snakefile").write_text(GPU_JOBS_SNAKEFILE)
    env = snakemake_env(REPGEOM_GPUS="1")
    result = run_snakemake("--profile", ROOT / "profiles/local", "--cores", "3", workdir=tmp_path, snakefile=None,
                           env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    spans = sorted(tuple(map(float, (tmp_path / f"done/{i}.txt").read_text().split())) for i in range(3))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    env["REPGEOM_GPUS"] = "3"
    for i in range(3):
        (tmp_path / f"done/{i}.txt").unlink()
    result = run_snakemake("--profile", ROOT / "profiles/local", "--cores", "3", workdir=tmp_path, snakefile=None,
                           env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    spans = sorted(tuple(map(float, (tmp_path / f"done/{i}.txt").read_text().split())) for i in range(3))
    assert spans[0][1] > spans[1][0], "with 3 GPUs they overlap"


def test_analysis_memory_is_sized_from_n_d_and_maxk(tmp_path):
    """Analysis jobs ask for what one layer needs (N prompts x D, maxk neighbours), the map's value being a floor."""
    from repgeom.analysis.params import layer_memory_mb

    config = yaml.safe_load(PAPER_70B.read_text())
    jobs = dry_run(tmp_path, PAPER_70B)
    analysis = [j for j in jobs if j["rule"] == "analyze_layers"]
    # At most 200 of MMLU's 14,042 test questions for each of 57 subjects; the token sample is larger.
    n_points = max(57 * 200, config["extraction"]["token_sample"]["size"])
    expected = layer_memory_mb(n_points, 8192, config["analysis"]["params"])
    assert expected > config["hardware"]["jobs"]["analyze"]["mem_mb"]
    assert analysis and {j["resources"]["mem_mb"] for j in analysis} == {expected}
