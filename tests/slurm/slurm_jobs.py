"""What the cluster tests share: Snakemake under profiles/slurm with the tests' overlay, the test configs, and reading
back from Slurm what jobs asked for and how they ended."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from repgeom.costs.dag import local_rules

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles/slurm"
VENV_BIN = str(Path(sys.executable).parent)

# The test overlay on profiles/slurm: status checks start after 1 s instead of 40 s. The test clusters keep no
# accounting: the profile finds that out itself and checks job status with squeue (MinJobAge=3600).
TEST_OVERLAY = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]
RUN_TIMEOUT = 1200
EXTRACT_GPUS = 2
TOO_MANY_GPUS = 9  # the test node has 8
WALL_CLOCK = re.compile(r"elapsed|wall_?time|_seconds$|^seconds$")


# ---------------------------------------------------------------------------------------------------------
# helpers


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Slurm's job variables or the user's SLURM_* settings, with the venv first. The test
    clusters' GPUs are files: jobs given them run on the CPU (REPGEOM_FAKE_GPUS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               REPGEOM_FAKE_GPUS="1", **extra)
    return env


def snakemake_command(workdir: Path, *extra: str, snakefile: Path = ROOT / "Snakefile") -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--profile", str(PROFILE),
            "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *TEST_OVERLAY, *extra]


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or clean_env(), cwd=ROOT,
                                start_new_session=True)


def finish(process: subprocess.Popen, log: Path, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"{shlex.join(process.args)} ran over {timeout} s:\n{log.read_text()[-3000:]}")
    return process.returncode, log.read_text()


def run(command: list[str], timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None) -> \
        subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env or clean_env(), cwd=ROOT, timeout=timeout)


def shrunk_config(results: str = "results") -> dict:
    """The default config, shrunk to a short run, with a hardware map whose entries are told apart by their
    memory and runtime, and extraction on 2 GPUs (which profiles/slurm/partitions.yaml sends to partition `gpu`)."""
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["results_dir"] = results
    for model in config["models"].values():
        if "build" in model:
            model["build"]["pretrain"]["steps"] = 20
    if "generate" in config["dataset"]:
        config["dataset"]["generate"].update(n_test=20, n_validation=5, n_mc_examples=200)
    config["shots"] = [0, 2]
    config["variants"] = {}
    # Fine-tuned conditions join the DAG only after sampling, and these tests compare Slurm's jobs with a dry run.
    config.pop("finetune", None)
    jobs = config["hardware"]["jobs"]
    for i, kind in enumerate(sorted(jobs)):
        jobs[kind] = {"gpus": EXTRACT_GPUS if kind == "extract" else 0, "cpus": 1, "mem_mb": 600 + 100 * i,
                      "runtime": 10 + i}
    config["hardware"]["models"] = {}
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def planned_jobs(dry_run_output: str) -> list[dict]:
    """Jobs of a dry run (with --printshellcmds): rule, whether it runs locally (a `localrule`, or a target rule
    like `all` with no output and no command), wildcards (in order) and resources."""
    jobs, job, local = [], None, local_rules()
    for line in dry_run_output.splitlines():
        header = re.fullmatch(r"(local)?(?:rule|checkpoint) (\S+):", line.strip())
        if header and not line.startswith(" "):
            job = {"rule": header.group(2), "local": bool(header.group(1)) or header.group(2) in local,
                   "wildcards": {}, "resources": {}, "output": False}
            jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            if key in ("wildcards", "resources"):
                pairs = (item.split("=", 1) for item in value.split(", "))
                job[key] = {k: int(v) if v.isdigit() else v for k, v in pairs}
            job["output"] |= key == "output"
        elif job is not None and line.strip() == "Shell command: None" and not job["output"]:
            job["local"] = True
    return jobs


def job_key(rule: str, wildcards: dict) -> str:
    """The comment snakemake-executor-plugin-slurm gives a job: rule_NAME[_wildcards_VALUES]."""
    values = "_".join(str(v) for v in wildcards.values())
    return f"rule_{rule}_wildcards_{values}" if values else f"rule_{rule}"


def remote_jobs(dry_run_output: str) -> dict[str, dict]:
    return {job_key(j["rule"], j["wildcards"]): j for j in planned_jobs(dry_run_output) if not j["local"]}


def run_id(log_text: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", log_text)
    assert match, f"no SLURM run ID in:\n{log_text[-2000:]}"
    return match.group(1)


def wait_for_run_id(log: Path, process: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"SLURM run ID: (\S+)", log.read_text())
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"no SLURM run ID from {shlex.join(process.args)}:\n{log.read_text()[-3000:]}")


def squeue(name: str, states: str = "all", env: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(job id, state, comment) of the jobs named `name` (a Snakemake run id), finished ones included."""
    out = subprocess.run(["squeue", "-h", "-t", states, "--name", name, "-o", "%i|%T|%k"], capture_output=True,
                         text=True, check=True, env=env).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]


def scontrol_job(job_id: str, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=True, env=env).stdout
    return dict(re.findall(r"(?:^|\s)([A-Za-z/:]+)=(\S*)", out))


def megabytes(value: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", value).groups()
    return round(float(number) * {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024**2}[unit])


def minutes(value: str) -> int:
    days, _, clock = value.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def requested(fields: dict[str, str]) -> dict:
    """What a job asked Slurm for, read back from `scontrol show job`."""
    gres = re.search(r"gpu[:/](\d+)", fields.get("TresPerJob", "") + fields.get("TresPerNode", ""))
    return {"gpu": int(gres.group(1)) if gres else 0, "cpus_per_task": int(fields["NumCPUs"]),
            "mem_mb": megabytes(fields["MinMemoryNode"]), "runtime": minutes(fields["TimeLimit"]),
            "slurm_partition": fields["Partition"], "tasks": int(fields["NumTasks"]),
            "nodes": int(fields["NumNodes"].split("-")[0])}


def wait_for_slurm_job(job_id: str, timeout: float = 120, env: dict[str, str] | None = None) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = scontrol_job(job_id, env)
        if fields["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return fields
        time.sleep(0.5)
    pytest.fail(f"Slurm job {job_id} did not finish in {timeout} s")


def result_tables(workdir: Path) -> dict[str, Path]:
    results = workdir / "results"
    return {str(p.relative_to(results)): p for p in sorted(results.rglob("*"))
            if p.suffix in (".parquet", ".csv") and p.is_file()
            and p.relative_to(results).parts[0] not in ("logs", "benchmarks")}


RANKS_SNAKEFILE = """
rule ranks:
    output: "ranks.txt"
    log: "ranks.log"
    resources: gpu=2, cpus_per_task=1, mem_mb=300, runtime=5, slurm_partition="gpu"
    shell: "python -m repgeom.launch -- python rank.py > {output} 2> {log}"
"""


