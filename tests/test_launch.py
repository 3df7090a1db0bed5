"""`python -m repgeom.launch`: the command it builds for 0, 1 and several GPUs, in and out of Slurm, and a real
2-rank torchrun on the CPU (the cluster test in tests/slurm/test_slurm.py runs it under Slurm)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import RANK_SCRIPT

from repgeom.launch import LaunchError, build_command, check_one_node, gpu_count, in_slurm_allocation_outside_step, \
    main, visible_devices

COMMAND = ["python", "-m", "repgeom.extract", "--model", "m", "--prompts", "p.parquet"]
PY = "/env/bin/python"


def torchrun(n):
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(n),
            "--no-python"]


@pytest.mark.parametrize("value, count", [(None, None), ("", 0), ("-1", 0), ("NoDevFiles", 0), ("0", 1),
                                          ("0,1", 2), ("GPU-a1b2,GPU-c3d4,GPU-e5f6", 3), (" 2, 3 ,", 2)])
def test_visible_devices(value, count):
    assert visible_devices(value) == count


def test_gpu_count_prefers_the_argument_then_slurm_then_cuda_visible_devices():
    env = {"SLURM_GPUS_ON_NODE": "5", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert gpu_count(8, env) == (8, "--gpus")
    assert gpu_count(0, env) == (0, "--gpus")
    assert gpu_count(None, env) == (5, "SLURM_GPUS_ON_NODE")
    assert gpu_count(None, {"CUDA_VISIBLE_DEVICES": "0,1"}) == (2, "CUDA_VISIBLE_DEVICES")
    assert gpu_count(None, {}) == (0, "no GPU given")
    with pytest.raises(LaunchError, match="0 or more"):
        gpu_count(-1, {})
    with pytest.raises(LaunchError, match="SLURM_GPUS_ON_NODE"):
        gpu_count(None, {"SLURM_GPUS_ON_NODE": "two"})


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("env", [{}, {"SLURM_JOB_ID": "7"}, {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}])
def test_one_gpu_or_none_runs_the_command_itself(gpus, env):
    assert build_command(COMMAND, gpus, env, python=PY) == (COMMAND, {})


def test_several_gpus_outside_slurm_run_under_torchrun():
    argv, env = build_command(COMMAND, 4, {}, python=PY)
    assert argv == torchrun(4) + COMMAND
    assert env == {}


def test_several_gpus_in_a_slurm_job_step_run_torchrun_directly():
    """snakemake-executor-plugin-slurm runs each job in `srun -n1 --gpus N`: the step already holds the GPUs."""
    slurm_step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_GPUS_ON_NODE": "5", "SLURM_CPUS_PER_TASK": "40"}
    argv, env = build_command(COMMAND, 5, slurm_step, python=PY)
    assert argv == torchrun(5) + COMMAND
    assert env == {"OMP_NUM_THREADS": "8"}


def test_several_gpus_in_a_batch_script_start_a_step_with_srun():
    batch = {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "64"}
    assert in_slurm_allocation_outside_step(batch)
    argv, env = build_command(COMMAND, 8, batch, python=PY)
    assert argv == ["srun", "--ntasks", "1", "--nodes", "1", "--gpus=8", "--kill-on-bad-exit=1",
                    "--cpus-per-task=64"] + torchrun(8) + COMMAND
    assert env == {"OMP_NUM_THREADS": "8"}


def test_thread_share_respects_a_given_omp_num_threads_and_the_cpus_argument():
    assert build_command(COMMAND, 2, {"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}, python=PY)[1] == {}
    assert build_command(COMMAND, 4, {}, python=PY, cpus=2)[1] == {"OMP_NUM_THREADS": "1"}


def test_no_command_is_an_error(capsys):
    with pytest.raises(LaunchError):
        build_command([], 2, {})
    with pytest.raises(SystemExit):
        main(["--gpus", "2", "--"])
    assert "no command given" in capsys.readouterr().err


def test_print_shows_the_command(capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert main(["--gpus", "2", "--print", "--", "python", "-c", "print(1)"]) == 0
    assert capsys.readouterr().out.strip() == (f"{sys.executable} -m torch.distributed.run --standalone --nnodes 1 "
                                               "--nproc-per-node 2 --no-python python -c 'print(1)'")
    assert main(["--gpus", "1", "--print", "--", "python", "-c", "print(1)"]) == 0
    assert capsys.readouterr().out.strip() == "python -c 'print(1)'"


@pytest.mark.slow
@pytest.mark.parametrize("gpus, ranks", [(1, ["rank 0 of 1"]), (2, ["rank 0 of 2", "rank 1 of 2"])])
def test_ranks_really_start(gpus, ranks, tmp_path):
    """Through the real CLI: one process as is, or two torchrun ranks with RANK and WORLD_SIZE (CPU only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    command = [sys.executable, "-m", "repgeom.launch", "--gpus", str(gpus), "--", "python", "-c", RANK_SCRIPT]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ranks
    assert f"{gpus} GPU(s) (--gpus)" in result.stderr


def test_a_failing_command_fails_the_launch(tmp_path):
    result = subprocess.run([sys.executable, "-m", "repgeom.launch", "--", sys.executable, "-c", "raise SystemExit(3)"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert result.returncode == 3


def test_a_multi_gpu_job_spread_over_nodes_is_refused_with_its_job_and_nodes():
    """What Slurm gives `sbatch --gpus=2` on nodes of one GPU each, without --nodes=1 (seen on tests/slurm/nodes.sh)."""
    spread = {"SLURM_JOB_ID": "41", "SLURM_JOB_NAME": "run-uuid", "SLURM_JOB_NUM_NODES": "2",
              "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "1"}
    for gpus in (2, 1):  # the rules' count, or one from SLURM_GPUS_ON_NODE
        with pytest.raises(LaunchError, match=r"Slurm job 41 \(run-uuid\) was given 2 nodes \(n\[1-2\]\), with 1 "
                                              r"GPU\(s\) on this one, but runs every rank here: submit it with --nodes=1"):
            check_one_node(gpus, spread)
    with pytest.raises(LaunchError, match=r"runs 4 ranks, but its node \(n3\) holds 2 of its GPUs"):
        check_one_node(4, {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n3",
                           "SLURM_GPUS_ON_NODE": "2"})
    # One node holding them all, or no Slurm at all: nothing to refuse.
    check_one_node(2, {**spread, "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "2"})
    check_one_node(1, {**spread, "SLURM_JOB_NUM_NODES": "1"})
    check_one_node(2, {"SLURM_JOB_NUM_NODES": "2"})


def test_the_launch_stops_before_any_rank_on_a_spread_job(tmp_path, capsys, monkeypatch):
    for name, value in {"SLURM_JOB_ID": "41", "SLURM_JOB_NAME": "x", "SLURM_JOB_NUM_NODES": "2",
                        "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "1", "SLURM_STEP_ID": "0"}.items():
        monkeypatch.setenv(name, value)
    marker = tmp_path / "ran"
    assert main(["--gpus", "2", "--", "touch", str(marker)]) == 1
    assert "submit it with --nodes=1" in capsys.readouterr().err
    assert not marker.exists()


def test_the_launched_command_knows_its_gpus(tmp_path):
    """REPGEOM_JOB_GPUS: what repgeom.distributed reads to stop a job given GPUs whose torch sees none."""
    out = tmp_path / "gpus"
    result = subprocess.run([sys.executable, "-m", "repgeom.launch", "--gpus", "1", "--", "sh", "-c",
                             f"echo $REPGEOM_JOB_GPUS > {out}"], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert result.returncode == 0, result.stderr
    assert out.read_text().strip() == "1"
