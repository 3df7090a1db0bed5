"""The config's hardware map -> each job's Slurm request, without a cluster: dry runs of the paper configs, the
profiles (account, partitions, status command), and the sbatch line snakemake-executor-plugin-slurm builds."""
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


@pytest.mark.parametrize("configfile, model, gpus", [(PAPER_8B, "llama-3-8b", 1), (PAPER_70B, "llama-3-70b", 5)])
def test_paper_extraction_gpus(tmp_path, configfile, model, gpus):
    jobs = dry_run(tmp_path, configfile)
    extract = [j for j in jobs if j["rule"] == "extract"]
    assert extract and all(j["resources"]["gpu"] == gpus and j["resources"]["nodes"] == 1 for j in extract)
    if configfile == PAPER_70B:
        # The reference fine-tunes 70B on 8 GPUs, and the layers of its 5-GPU extraction are sharded.
        finetune = [j for j in jobs if j["rule"] == "finetune"]
        assert finetune and all(j["resources"]["gpu"] == 8 for j in finetune)


@pytest.mark.parametrize("configfile", [None, PAPER_8B, PAPER_70B], ids=["default", "8b", "70b"])
def test_every_job_asks_for_a_row_of_the_hardware_map(tmp_path, configfile):
    """Resources come from the config's map (common.smk), never literals in the rules, each job on one node; where
    a job goes (partition, account) is the profile's, never the workflow's."""
    jobs = dry_run(tmp_path, configfile)
    rows = hardware_rows(configfile or ROOT / "config/config.yaml")
    assert jobs
    for job in jobs:
        gpu, cpus, mem, runtime = asked(job)
        assert any((gpu, cpus) == row[:2] for row in rows), job
        assert job["resources"]["nodes"] == 1, job
        assert not {"slurm_partition", "slurm_account"} & set(job["resources"]), job
        assert ("slurm_extra" in job["resources"]) == (job["rule"] == "finetune"), job
    analysis = [j for j in jobs if j["rule"].startswith("analyze")]
    assert analysis and all(j["resources"]["gpu"] == 0 for j in analysis)


def test_a_config_with_a_slurm_section_is_told_where_it_went(tmp_path):
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["slurm"] = {"account": "lab"}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake("--dry-run", "--cores", "1", "--configfile", str(tmp_path / "old.yaml"), workdir=tmp_path)
    assert result.returncode != 0
    assert "slurm: account and partitions are set in profiles/slurm (SLURM_ACCOUNT, partitions.yaml)" in \
        result.stdout + result.stderr


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
    for key in ("SLURM_MAX_JOBS", "SLURM_LATENCY_WAIT", "SLURM_RETRIES", "SLURM_LOGDIR", "SLURM_ACCOUNT",
                "SLURM_GPU_MODEL", "SNAKEMAKE_SLURM_PARTITIONS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_STATUS_COMMAND", "squeue")
    settings = profile("slurm")
    assert settings["executor"] == "slurm"
    assert (settings["jobs"], settings["latency-wait"], settings["retries"]) == (100, 60, 2)
    assert settings["rerun-incomplete"] is True
    # No account: the plugin guesses one from sacct's history.
    assert settings["default-resources"] == {"tasks_per_gpu": 0}
    assert settings["slurm-status-command"] == "squeue"
    settings = profile("slurm", {"SLURM_MAX_JOBS": "7", "SLURM_LATENCY_WAIT": "5", "SLURM_RETRIES": "0",
                                 "SLURM_ACCOUNT": "lab", "SLURM_GPU_MODEL": "a100",
                                 "SNAKEMAKE_SLURM_PARTITIONS": "/site/partitions.yaml"}, monkeypatch)
    assert (settings["jobs"], settings["latency-wait"], settings["retries"]) == (7, 5, 0)
    assert settings["default-resources"] == {"tasks_per_gpu": 0, "slurm_account": "lab", "gpu_model": "a100"}
    assert settings["slurm-partition-config"] == "/site/partitions.yaml"


def test_the_partition_file_is_found_wherever_snakemake_runs(monkeypatch, tmp_path):
    """An absolute path: Snakemake would pass `profiles/slurm/partitions.yaml`, which `--directory` breaks."""
    from repgeom.workflow.slurm_profile import profile_file

    monkeypatch.chdir(ROOT)
    expected = str(ROOT / "profiles/slurm/partitions.yaml")
    assert profile_file("partitions.yaml", ["snakemake", "--profile", "profiles/slurm"], {}) == expected
    assert profile_file("partitions.yaml", ["snakemake", "--profile=profiles/slurm/config.yaml"], {}) == expected
    assert profile_file("partitions.yaml", ["snakemake"], {"SNAKEMAKE_PROFILE": str(ROOT / "profiles/slurm")}) == \
        expected
    assert profile_file("partitions.yaml", ["snakemake"], {}) == "partitions.yaml"


def test_the_shipped_partitions_send_gpu_jobs_to_the_gpu_partition():
    """snakemake-executor-plugin-slurm's own choice among profiles/slurm/partitions.yaml."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    class Resources(dict):
        __getattr__ = dict.__getitem__

    partitions = read_partition_file(ROOT / "profiles/slurm/partitions.yaml")
    logger = SimpleNamespace(info=lambda *a: None, debug=lambda *a: None, warning=lambda *a: None)

    def best(**resources):
        job = SimpleNamespace(resources=Resources({"mem_mb": 1000, "runtime": 10, **resources}), threads=1,
                              name="job", is_group=lambda: False)
        return get_best_partition(partitions, job, logger)

    assert best(gpu=2) == "gpu" and best(gpu=0) == "cpu" and best(gres="gpu:a100:2") == "gpu"
    assert best(gpu=9) is None, "more GPUs than any partition holds"


@pytest.mark.parametrize("sacct_rc, min_job_age, expected", [(0, "300 sec", "sacct"), (1, "300 sec", "squeue"),
                                                             (1, "60 sec", None)])
def test_status_command_is_what_the_cluster_answers(monkeypatch, sacct_rc, min_job_age, expected):
    """`sacct` exists on a cluster without accounting but fails; the plugin would then wait for job states that never
    come, silently. The profile asks it once; with squeue, finished jobs must outlive the status checks."""
    from repgeom.workflow import slurm_profile

    def run(argv, **kwargs):
        if argv[0] == "sacct":
            return SimpleNamespace(returncode=sacct_rc, stdout="", stderr="Slurm accounting storage is disabled")
        return SimpleNamespace(returncode=0, stdout=f"KillWait                = 30 sec\nMinJobAge               = "
                                                    f"{min_job_age}\n", stderr="")

    monkeypatch.setattr(slurm_profile.shutil, "which", lambda name: f"/usr/bin/{name}")
    if expected is None:
        with pytest.raises(slurm_profile.ProfileError, match=r"MinJobAge=60 s.*SLURM_STATUS_COMMAND"):
            slurm_profile.status_command({}, run)
    else:
        assert slurm_profile.status_command({}, run) == expected
    assert slurm_profile.status_command({"SLURM_STATUS_COMMAND": "sacct"}, run) == "sacct"
    with pytest.raises(slurm_profile.ProfileError, match="give sacct or squeue"):
        slurm_profile.status_command({"SLURM_STATUS_COMMAND": "scontrol"}, run)


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


def sbatch_line(**values) -> str:
    """What snakemake-executor-plugin-slurm submits for a job of these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(values), threads=values["cpus_per_task"], name="extract",
                          is_group=lambda: False)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule_extract", "account": "-A lab",
              "partition": "-p a100", "workdir": "/work"}
    return get_submit_command(job, params) + set_gres_string(job)


EXTRACT_70B = {"gpu": 5, "cpus_per_task": 40, "mem_mb": 400000, "runtime": 480, "tasks_per_gpu": 0, "nodes": 1}


def test_sbatch_line_for_a_70b_extraction():
    """Under profiles/slurm: one task with all 40 CPUs, 5 GPUs on one node, the memory and time limit of the map."""
    call = sbatch_line(**EXTRACT_70B)
    assert "--ntasks-per-gpu" not in call and "--ntasks" not in call, "one task: cpus_per_task is the job's total"
    for part in ("--cpus-per-task=40", "--gpus=5", "--nodes=1", "--mem 400000", "-t 480", "-p a100", "-A lab"):
        assert part in call, (part, call)


def test_a_cluster_may_ask_for_gpus_by_type_or_as_gres():
    """SLURM_GPU_MODEL (the profile's gpu_model) gives --gpus=TYPE:N; a GRES-only cluster sets gpu to 0 and gres per
    rule (README.md here): the sbatch line changes, the ranks (the rule's params) do not."""
    assert "--gpus=a100:5" in sbatch_line(**EXTRACT_70B, gpu_model="a100")
    gres = sbatch_line(**{**EXTRACT_70B, "gpu": 0}, gres="gpu:a100:5")
    assert "--gres=gpu:a100:5" in gres and "--gpus" not in gres


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


def test_gpus_asked_as_gres_leave_the_ranks_to_the_hardware_map(tmp_path):
    """A GRES-only cluster's profile sets `gpu: 0, gres: ...` per rule (profiles/slurm/README.md): the sbatch line
    changes, while the launcher still starts the hardware map's 8 ranks."""
    environment = snakemake_env({k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    result = run_snakemake("--dry-run", "--printshellcmds", "--cores", "1", "--configfile", str(PAPER_70B),
                           "--set-resources", "finetune:gpu=0", "finetune:gres='gpu:a100:8'", workdir=tmp_path,
                           env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    (finetune,) = re.findall(r"rule finetune:\n(.*?)\n\n", text, re.S)
    assert "gpu=0" in finetune and "gres=gpu:a100:8" in finetune, finetune
    assert "python -m repgeom.launch --gpus 8 " in finetune, finetune
