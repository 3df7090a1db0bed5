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
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import RANK_SCRIPT

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "tests/slurm/cluster.sh"
PROFILE = ROOT / "profiles/slurm"
VENV_BIN = str(Path(sys.executable).parent)

# The test overlay on profiles/slurm: this cluster keeps no accounting (so job status comes from squeue, with
# MinJobAge=3600), and status checks start after 1 s instead of 40 s.
TEST_OVERLAY = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                "--seconds-between-status-checks", "1"]
RUN_TIMEOUT = 1200
EXTRACT_GPUS = 2
TOO_MANY_GPUS = 9  # the test node has 8
WALL_CLOCK = re.compile(r"elapsed|wall_?time|_seconds$|^seconds$")


# ---------------------------------------------------------------------------------------------------------
# helpers


def clean_env() -> dict[str, str]:
    """This environment without Slurm's job variables or the user's SLURM_* settings, with the venv first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def snakemake_command(workdir: Path, *extra: str, snakefile: Path = ROOT / "Snakefile") -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--profile", str(PROFILE),
            "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *TEST_OVERLAY, *extra]


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT,
                                start_new_session=True)


def finish(process: subprocess.Popen, log: Path, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"{shlex.join(process.args)} ran over {timeout} s:\n{log.read_text()[-3000:]}")
    return process.returncode, log.read_text()


def run(command: list[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=timeout)


def shrunk_config(results: str = "results") -> dict:
    """The default config, shrunk to a short run, with a hardware map whose entries are told apart by their
    memory and runtime, extraction on 2 GPUs, and the test cluster's two partitions."""
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
    config["slurm"] = {"account": "", "gpu_partition": "gpu", "cpu_partition": "cpu"}
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def planned_jobs(dry_run_output: str) -> list[dict]:
    """Jobs of a dry run (with --printshellcmds): rule, whether it runs locally (a `localrule`, or a target rule
    like `all` with no output and no command), wildcards (in order) and resources."""
    jobs, job = [], None
    for line in dry_run_output.splitlines():
        header = re.fullmatch(r"(local)?(?:rule|checkpoint) (\S+):", line.strip())
        if header and not line.startswith(" "):
            job = {"rule": header.group(2), "local": bool(header.group(1)), "wildcards": {}, "resources": {},
                   "output": False}
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


def squeue(name: str, states: str = "all") -> list[tuple[str, str, str]]:
    """(job id, state, comment) of the jobs named `name` (a Snakemake run id), finished ones included."""
    out = subprocess.run(["squeue", "-h", "-t", states, "--name", name, "-o", "%i|%T|%k"], capture_output=True,
                         text=True, check=True).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=True).stdout
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
            "slurm_partition": fields["Partition"], "tasks": int(fields["NumTasks"])}


def wait_for_slurm_job(job_id: str, timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = scontrol_job(job_id)
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


# ---------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def cluster():
    """tests/slurm/cluster.sh up, and down at the end of the session when this fixture started it.

    Not at the end of this module: with Slurm installed but its controller stopped, every later `snakemake`
    call would wait 10 s for the Slurm executor plugin's `scontrol show config` to time out."""
    if os.geteuid() != 0:
        pytest.skip("a Slurm cluster needs root to install and start (tests/slurm/cluster.sh)")
    try:
        up = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("tests/slurm/cluster.sh up took over 15 minutes")
    if up.returncode != 0:
        pytest.skip(f"Slurm cannot start here (tests/slurm/cluster.sh up, exit {up.returncode}): "
                    f"{up.stderr.strip()[-1000:]}")
    yield
    if "started" in up.stdout:
        subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True, timeout=300)


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
    finished_before_kill = {comments[submitted[n]] for n in re.findall(r"Finished jobid: (\d+)", killed_log)}

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
        expected = {key: planned["resources"][key] for key in ("gpu", "cpus_per_task", "mem_mb", "runtime",
                                                                "slurm_partition")}
        assert {key: asked[key] for key in expected} == expected, comment
        assert asked["tasks"] == 1, f"{comment}: one task; the launcher starts the ranks"
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
