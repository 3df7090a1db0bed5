"""On clusters as their users meet them: GPU jobs on a cluster of several nodes (tests/slurm/nodes.sh: `split` has
n1 and n2 with one GPU each, `pair` has n3 with two), a training job stopped by its time limit and resumed by its
retry, and a training job requeued (`scontrol requeue`) while it trains. The training runs are started at once and
compared with an uninterrupted run of the same workflow on this machine."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import RANK_SCRIPT, faults_path
from slurm_jobs import (ROOT, clean_env, finish, minutes, run, run_id, scontrol_job, shrunk_config, snakemake_command, squeue,
                        start, wait_for_run_id, wait_for_slurm_job, write_config)

pytestmark = pytest.mark.slow

PLACED_RANKS = """
rule ranks:
    output: "ranks.txt"
    log: "ranks.log"
    resources: gpu=2, nodes=1, cpus_per_task=1, mem_mb=200, runtime=5, slurm_partition="{partition}"
    shell: "python -m repgeom.launch -- python rank.py > {{output}} 2> {{log}}"
"""
MODEL, METHOD = "tiny-llama", "lora"
ADAPTERS = f"results/finetune/{MODEL}/{METHOD}"
TRAINING_TARGET = f"{ADAPTERS}/checkpoints.json"
# Seconds each optimizer step is slowed by (tests/faults), so that the training outlasts its first time limit.
STEP_SECONDS = "4"


def ranks_workflow(base: Path, partition: str) -> Path:
    folder = base / partition
    folder.mkdir()
    (folder / "Snakefile").write_text(PLACED_RANKS.format(partition=partition))
    (folder / "rank.py").write_text(RANK_SCRIPT)
    (folder / "config.yaml").write_text("{}\n")
    return folder


def test_a_multi_gpu_job_runs_on_one_node_or_not_at_all(nodes_cluster, tmp_path):
    """The workflow's jobs ask for one node: 2 GPUs from two 1-GPU nodes are refused at submission, 2 GPUs of one
    node run their 2 ranks there."""
    env = clean_env(**nodes_cluster)
    for partition in ("split", "pair"):
        folder = ranks_workflow(tmp_path, partition)
        result = run(snakemake_command(folder, "--retries", "0", snakefile=folder / "Snakefile"), env=env)
        log = result.stdout + result.stderr
        jobs = squeue(run_id(log), env=env)
        if partition == "split":
            assert result.returncode != 0
            assert "Requested node configuration is not available" in log and "--nodes=1" in log, log[-3000:]
            assert jobs and all(scontrol_job(job_id, env)["RunTime"] == "00:00:00" for job_id, _, _ in jobs)
        else:
            assert result.returncode == 0, log[-3000:]
            assert sorted((folder / "ranks.txt").read_text().splitlines()) == ["rank 0 of 2", "rank 1 of 2"]
            ((job_id, state, _),) = jobs
            assert state == "COMPLETED" and scontrol_job(job_id, env)["NodeList"] == "n3"


def test_the_launcher_refuses_a_job_spread_over_nodes(nodes_cluster, tmp_path):
    """Submitted by hand without --nodes=1, Slurm gives a 2-GPU job one GPU on each of n1 and n2: the launcher stops
    before any rank starts, naming the job and its nodes."""
    env = clean_env(**nodes_cluster)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    out = tmp_path / "spread.out"
    submitted = subprocess.run(["sbatch", "--parsable", "-p", "split", "--gpus=2", "--mem=100", "-t", "2", "-o",
                                str(out), "-D", str(tmp_path), "--wrap", "python -m repgeom.launch -- python rank.py"],
                               capture_output=True, text=True, env=env, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    fields = wait_for_slurm_job(job_id, env=env)
    assert (fields["JobState"], fields["NodeList"]) == ("FAILED", "n[1-2]")
    text = out.read_text()
    assert (f"repgeom.launch: error: Slurm job {job_id} (wrap) was given 2 nodes (n[1-2]), with 1 GPU(s) on this one, "
            "but runs every rank here: submit it with --nodes=1") in text, text
    assert "rank 0 of" not in text


def training_config(runtime: int) -> dict:
    """The shrunk config with its fine-tuning, which is given `runtime` minutes (the retries' growth: x1.5)."""
    config = shrunk_config()
    config["finetune"] = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())["finetune"]
    config["hardware"]["jobs"]["finetune"] = {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": runtime}
    return config


def attempts(workdir: Path) -> list[dict]:
    """What each process of the training did (repgeom.finetune's attempts.jsonl)."""
    return [json.loads(line) for line in (workdir / ADAPTERS / "attempts.jsonl").read_text().splitlines()]


def steps_redone(runs: list[dict]) -> int:
    return sum(run["last_step"] - run["resumed_after"] for run in runs) - runs[-1]["last_step"]


def adapter_bytes(workdir: Path) -> dict[str, bytes]:
    """The adapters, not their provenance records (which name the run's folder and times)."""
    folder = workdir / ADAPTERS / "checkpoints"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".prov.json")}


@pytest.fixture(scope="module")
def training_runs(cluster, tmp_path_factory):
    """At once: the training uninterrupted on this machine (the reference); under profiles/slurm with a 2-minute
    limit it cannot keep; and under profiles/slurm --slurm-requeue, requeued once it has done 3 steps."""
    base = tmp_path_factory.mktemp("training")
    reference = write_config(base / "reference", training_config(runtime=30))
    limited = write_config(base / "limited", training_config(runtime=2))
    requeued = write_config(base / "requeued", training_config(runtime=30))
    slow = clean_env(**faults_path(), REPGEOM_TEST_STEP_SECONDS=STEP_SECONDS)
    processes = {
        "reference": start([sys.executable, "-m", "snakemake", TRAINING_TARGET, "--snakefile", str(ROOT / "Snakefile"),
                            "--cores", "1", "--directory", str(reference), "--configfile",
                            str(reference / "config.yaml")], base / "reference.log"),
        "limited": start(snakemake_command(limited, TRAINING_TARGET), base / "limited.log", env=slow),
        "requeued": start(snakemake_command(requeued, "--slurm-requeue", TRAINING_TARGET), base / "requeued.log",
                          env=slow),
    }
    requeue_id = wait_for_run_id(base / "requeued.log", processes["requeued"])
    deadline = time.monotonic() + 900
    train_log = requeued / ADAPTERS / "train_log.csv"
    while not (train_log.is_file() and len(train_log.read_text().splitlines()) > 3):
        assert processes["requeued"].poll() is None and time.monotonic() < deadline, "the training did not start"
        time.sleep(0.5)
    (training_job,) = [job_id for job_id, state, comment in squeue(requeue_id) if comment.startswith("rule_finetune")]
    subprocess.run(["scontrol", "requeue", training_job], check=True, capture_output=True, text=True)
    outcome = {name: finish(process, base / f"{name}.log") for name, process in processes.items()}
    return {"reference": reference, "limited": limited, "requeued": requeued, "outcome": outcome,
            "requeued_job": training_job}


def test_training_stopped_by_its_time_limit_resumes_in_its_retry(training_runs):
    code, log = training_runs["outcome"]["limited"]
    assert code == 0, log[-5000:]
    runs = attempts(training_runs["limited"])
    # Each attempt but the last was stopped by Slurm (its warning, SIGUSR1, or the limit, SIGTERM) after a step it
    # saved, and the next one resumed after that very step: no step was done twice.
    assert len(runs) >= 2 and runs[-1]["stopped_by"] is None, runs
    assert all(run["stopped_by"] in ("SIGUSR1", "SIGTERM") for run in runs[:-1]), runs
    assert [run["resumed_after"] for run in runs] == [0] + [run["last_step"] for run in runs[:-1]], runs
    assert steps_redone(runs) == 0
    print(f"time limit: attempts {runs}")
    # The retry asked for more time: retry_growth x the runtime.
    limits = sorted((int(job_id), minutes(scontrol_job(job_id)["TimeLimit"]))
                    for job_id, _, comment in squeue(run_id(log)) if comment.startswith("rule_finetune"))
    assert [limit for _, limit in limits] == [2, 3][:len(runs)] + [4] * (len(runs) - 2), limits
    assert adapter_bytes(training_runs["limited"]) == adapter_bytes(training_runs["reference"])


def test_a_requeued_training_job_resumes(training_runs):
    code, log = training_runs["outcome"]["requeued"]
    assert code == 0, log[-5000:]
    runs = attempts(training_runs["requeued"])
    print(f"requeue: attempts {runs}")
    assert len(runs) == 2 and runs[0]["stopped_by"] == "SIGTERM" and runs[0]["last_step"] >= 3, runs
    assert runs[1]["resumed_after"] == runs[0]["last_step"] and steps_redone(runs) == 0, runs
    fields = scontrol_job(training_runs["requeued_job"])
    assert (fields["Requeue"], fields["Restarts"]) == ("1", "1"), "submitted requeueable (--requeue), requeued once"
    assert adapter_bytes(training_runs["requeued"]) == adapter_bytes(training_runs["reference"])
