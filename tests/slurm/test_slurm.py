"""`snakemake --profile profiles/slurm` against a real single-node Slurm cluster (tests/slurm/cluster.sh up),
and the config's hardware map -> Slurm resources of the paper configs (dry runs, no cluster needed).

The cluster test runs, at once, on a shrunken copy of the default config:
  A  the default workflow, uninterrupted (the reference);
  B  the same workflow, killed (SIGKILL) half-way with a job running, that job and the rest `scancel`led, then
     started again with the same command;
  C  the workflow with every job mapped to 9 GPUs, one more than the node has: refused at submission;
  D  a one-rule workflow whose 2-GPU job starts its ranks with `python -m repgeom.launch`;
and a plain `sbatch` of the launcher (the batch-script path). Each test then checks one claim.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import RANK_SCRIPT
from slurm_jobs import (EXTRACT_GPUS, RANKS_SNAKEFILE, RUN_TIMEOUT, TOO_MANY_GPUS, WALL_CLOCK, clean_env, finish,
                        remote_jobs, requested, result_tables, run, run_id, scontrol_job, shrunk_config,
                        snakemake_command, squeue, start, wait_for_run_id, wait_for_slurm_job, write_config)

# ---------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """Runs A, B (killed, resumed), C and D at once; see the module docstring."""
    base = tmp_path_factory.mktemp("slurm")
    config = shrunk_config()
    ref, intr = write_config(base / "reference", config), write_config(base / "interrupted", config)
    refused_config = shrunk_config()
    for spec in refused_config["hardware"]["jobs"].values():
        spec["gpus"] = TOO_MANY_GPUS
    refused = write_config(base / "too_many_gpus", refused_config)
    ranks = base / "ranks"
    ranks.mkdir()
    (ranks / "Snakefile").write_text(RANKS_SNAKEFILE)
    (ranks / "rank.py").write_text(RANK_SCRIPT)
    (ranks / "config.yaml").write_text("{}\n")

    plan = run(snakemake_command(ref, "--dry-run", "--printshellcmds"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = remote_jobs(plan.stdout + plan.stderr)
    assert len(planned) >= 5, plan.stdout[-3000:]

    batch_out = base / "batch_ranks.out"
    batch = subprocess.run(["sbatch", "--parsable", "-p", "gpu", f"--gpus={EXTRACT_GPUS}", "--cpus-per-task=1",
                            "--mem=300", "-t", "5", "-o", str(batch_out), "-D", str(base), "--wrap",
                            f"python -m repgeom.launch -- python {shlex.quote(str(ranks / 'rank.py'))}"],
                           capture_output=True, text=True, env=clean_env(), check=True)

    interrupted_command = snakemake_command(intr)
    processes = {
        "reference": start(snakemake_command(ref), base / "reference.log"),
        "interrupted": start(interrupted_command, base / "interrupted.log"),
        "too_many_gpus": start(snakemake_command(refused), base / "too_many_gpus.log"),
        "ranks": start(snakemake_command(ranks, snakefile=ranks / "Snakefile"), base / "ranks.log"),
    }

    # B: wait until half its jobs are done and one has just started, then kill Snakemake and cancel the jobs.
    process = processes["interrupted"]
    interrupted_id = wait_for_run_id(base / "interrupted.log", process)
    seen_running, deadline = set(), time.monotonic() + RUN_TIMEOUT
    while True:
        assert process.poll() is None, "the run finished before it could be interrupted"
        assert time.monotonic() < deadline, "the run did not get half-way"
        jobs = squeue(interrupted_id)
        done = sum(state == "COMPLETED" for _, state, _ in jobs)
        running = {job_id for job_id, state, _ in jobs if state == "RUNNING"}
        if done >= len(planned) // 2 and running - seen_running:
            break
        seen_running |= running
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_log = (base / "interrupted.log").read_text()
    active = [(job_id, state, comment) for job_id, state, comment in squeue(interrupted_id)
              if state in ("PENDING", "RUNNING", "CONFIGURING")]
    cancelled_running = [comment for _, state, comment in active if state == "RUNNING"]
    subprocess.run(["scancel", *(job_id for job_id, _, _ in active)], check=True)
    for job_id, _, _ in active:
        wait_for_slurm_job(job_id)
    cancelled_states = {comment: scontrol_job(job_id)["JobState"] for job_id, _, comment in active}
    submissions = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", killed_log)
    submitted = {number: job_id for number, job_id, _ in submissions}
    # A job whose job-step Snakemake reported it done before scancel reached it (its outputs are stored and
    # complete; Slurm still calls it CANCELLED when the cancel lands during the job's teardown).
    job_logs = {job_id: Path(log) for _, job_id, log in submissions}
    done_in_job = {comment for job_id, state, comment in active if state == "RUNNING"
                   and "Finished jobid: 0 " in job_logs[job_id].read_text()}
    comments = {job_id: comment for job_id, _, comment in squeue(interrupted_id)}
    # Local rules (tables, merges, figures) finish in Snakemake's own process, with no Slurm job.
    finished_before_kill = {comments[submitted[n]] for n in re.findall(r"Finished jobid: (\d+)", killed_log)
                            if n in submitted}

    missing = run(interrupted_command + ["--dry-run", "--printshellcmds"])
    resumed = run(interrupted_command)

    outcome = {name: finish(p, base / f"{name}.log") for name, p in processes.items() if name != "interrupted"}
    batch_fields = wait_for_slurm_job(batch.stdout.strip().split(";")[0])
    return {
        "config": config, "planned": planned, "reference": ref, "interrupted": intr, "ranks": ranks,
        "outcome": outcome, "killed_log": killed_log, "interrupted_id": interrupted_id,
        "cancelled_running": cancelled_running, "cancelled_states": cancelled_states, "done_in_job": done_in_job,
        "finished_before_kill": finished_before_kill, "missing": missing, "resumed": resumed,
        "batch": (batch_fields, batch_out),
    }


# ---------------------------------------------------------------------------------------------------------
# the cluster tests


@pytest.mark.slow
def test_every_job_went_through_sbatch(runs):
    code, log = runs["outcome"]["reference"]
    assert code == 0, log[-5000:]
    jobs = squeue(run_id(log))
    assert sorted(comment for _, _, comment in jobs) == sorted(runs["planned"]), \
        "one Slurm job per non-local job of the dry run"
    assert all(state == "COMPLETED" for _, state, _ in jobs), jobs
    # Snakemake's log names the Slurm job id of every job it submitted.
    log_ids = sorted(re.findall(r"has been submitted with SLURM jobid (\d+)", log), key=int)
    assert log_ids == sorted((job_id for job_id, _, _ in jobs), key=int)
    logfile = re.search(r"Complete log\(s\): (\S+)", log).group(1)
    assert sorted(re.findall(r"with SLURM jobid (\d+)", Path(logfile).read_text()), key=int) == log_ids


@pytest.mark.slow
def test_jobs_requested_what_the_hardware_map_says(runs):
    code, log = runs["outcome"]["reference"]
    assert code == 0, log[-5000:]
    hardware = runs["config"]["hardware"]["jobs"]
    seen_rules = set()
    for job_id, _, comment in squeue(run_id(log)):
        planned = runs["planned"][comment]
        asked = requested(scontrol_job(job_id))
        expected = {key: planned["resources"][key] for key in ("gpu", "cpus_per_task", "mem_mb", "runtime", "nodes")}
        assert {key: asked[key] for key in expected} == expected, comment
        assert asked["tasks"] == 1, f"{comment}: one task; the launcher starts the ranks"
        # profiles/slurm/partitions.yaml: the plugin sends GPU jobs to `gpu`, the others to `cpu`.
        assert asked["slurm_partition"] == ("gpu" if asked["gpu"] else "cpu"), comment
        if planned["rule"] == "extract":
            spec = hardware["extract"]
            assert spec["gpus"] == EXTRACT_GPUS
            assert (asked["gpu"], asked["cpus_per_task"], asked["mem_mb"], asked["runtime"]) == \
                (spec["gpus"], spec["cpus"], spec["mem_mb"], spec["runtime"]), comment
        seen_rules.add(planned["rule"])
    assert "extract" in seen_rules


@pytest.mark.slow
def test_more_gpus_than_a_node_has_fails_at_submission(runs):
    code, log = runs["outcome"]["too_many_gpus"]
    assert code != 0
    failures = re.findall(r"Error in rule (\S+):\n\s+message: SLURM sbatch failed\. The error message was "
                          r"'([^']*)'\.\n\s+sbatch call:\n\s+(sbatch [^\n]*)", log)
    assert failures, log[-5000:]
    for rule, error, call in failures:
        assert "Requested node configuration is not available" in error
        assert f"--gpus={TOO_MANY_GPUS}" in call and f"rule_{rule}" in call
    # Slurm keeps a record of each refused submission: failed at once, never started.
    for job_id, state, comment in squeue(run_id(log)):
        fields = scontrol_job(job_id)
        assert (state, fields["Reason"], fields["RunTime"]) == ("FAILED", "BadConstraints", "00:00:00"), comment
    # Each retry asks for retry_growth times more memory and runtime than the one before.
    rule = failures[0][0]
    calls = [call for r, _, call in failures if r == rule]
    growth = runs["config"]["hardware"]["retry_growth"]
    mems = [int(re.search(r"--mem (\d+)", c).group(1)) for c in calls]
    times = [int(re.search(r" -t '?(\d+)", c).group(1)) for c in calls]
    assert len(calls) == 3, "the profile's 2 retries"
    assert mems == [int(mems[0] * growth**i) for i in range(3)]
    assert times == [int(times[0] * growth**i) for i in range(3)]


@pytest.mark.slow
def test_multi_gpu_job_starts_one_rank_per_gpu(runs):
    code, log = runs["outcome"]["ranks"]
    assert code == 0, log[-5000:]
    assert "has been submitted with SLURM jobid" in log
    assert sorted((runs["ranks"] / "ranks.txt").read_text().splitlines()) == ["rank 0 of 2", "rank 1 of 2"]
    assert "2 GPU(s) (SLURM_GPUS_ON_NODE)" in (runs["ranks"] / "ranks.log").read_text()
    # In a batch script, outside any job step, the launcher starts torchrun through srun.
    fields, out = runs["batch"]
    assert fields["JobState"] == "COMPLETED", out.read_text()
    text = out.read_text()
    assert "srun --ntasks 1" in text and "torch.distributed.run" in text
    ranks = sorted(line for line in text.splitlines() if line.startswith("rank "))
    assert ranks == ["rank 0 of 2", "rank 1 of 2"], text


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_command(runs):
    assert runs["cancelled_running"], "a job was running when Snakemake was killed"
    assert set(runs["cancelled_states"].values()) <= {"CANCELLED", "COMPLETED"}
    missing = runs["missing"]
    assert missing.returncode == 0, missing.stderr[-5000:]
    to_run = remote_jobs(missing.stdout + missing.stderr)
    assert "Removed a stale lock" in missing.stdout + missing.stderr
    resumed = runs["resumed"]
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-5000:]
    ran = sorted(comment for _, _, comment in squeue(run_id(resumed.stdout + resumed.stderr)))
    # Only what was missing ran again: the job cut off, and those not started, not those finished before.
    assert ran == sorted(to_run)
    # A running job can still finish between squeue and scancel; its own job step then recorded its outputs as
    # complete, so it must not run again. Those that scancel cut off must. Only the job step's log tells which:
    # Slurm's state does not (CANCELLED when the cancel lands during a finished job's teardown, and COMPLETED
    # for a job whose step was cancelled but whose batch script then exited cleanly). A job whose step finished
    # and whose teardown the cancel cut (CANCELLED) may not have cleared Snakemake's incomplete-output marker
    # yet: running it again is then right too, so only a finished job that Slurm also saw complete is held to it.
    states, done_in_job = runs["cancelled_states"], runs["done_in_job"]
    cut_off = set(runs["cancelled_running"]) - done_in_job
    completed = {comment for comment in set(runs["cancelled_running"]) & done_in_job if states[comment] == "COMPLETED"}
    assert cut_off, f"no running job was cut off: {states}"
    assert cut_off <= set(ran) and not completed & set(ran), (states, done_in_job)
    assert not set(ran) & runs["finished_before_kill"]
    assert runs["finished_before_kill"] and set(ran) < set(runs["planned"])


@pytest.mark.slow
def test_resumed_outputs_equal_an_uninterrupted_run(runs):
    assert runs["outcome"]["reference"][0] == 0 and runs["resumed"].returncode == 0
    reference, resumed = result_tables(runs["reference"]), result_tables(runs["interrupted"])
    assert reference and sorted(reference) == sorted(resumed)
    for name, path in reference.items():
        read = pd.read_csv if path.suffix == ".csv" else pd.read_parquet
        a, b = read(path), read(resumed[name])
        # Wall-clock measurements (the pre-training log's elapsed_s) differ between any two runs.
        clock = [c for c in a.columns if WALL_CLOCK.search(str(c))]
        pd.testing.assert_frame_equal(a.drop(columns=clock), b.drop(columns=clock), check_exact=True, obj=name)
        if not clock:
            assert path.read_bytes() == resumed[name].read_bytes(), name
