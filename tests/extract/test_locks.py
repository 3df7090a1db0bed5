"""One writer per store group: the lock helper (`repgeom.locks`) held by another process, released by its death (even by
SIGKILL), per-rank lock files, and an extraction that meets a live holder stopping before it writes anything."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from repgeom.extract.__main__ import main
from repgeom.extract.job import ExtractionJob
from repgeom.locks import LockedError, exclusive_lock, rank_lock_path, rank_locks

HOLD = """
import sys, time
from repgeom.locks import rank_locks
with rank_locks(sys.argv[1], "the thing", int(sys.argv[2]), int(sys.argv[3])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder():
    """Start a process that holds `rank_locks(base, ..., rank, world_size)` until killed; it is SIGKILLed at the end."""
    started = []

    def start(base, rank=0, world_size=1):
        child = subprocess.Popen([sys.executable, "-c", HOLD, str(base), str(rank), str(world_size)],
                                 stdout=subprocess.PIPE, text=True)
        started.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()


def test_a_waiting_job_says_whom_it_waits_for_and_goes_on_when_it_ends(holder, tmp_path, caplog):
    """The workflow's jobs wait: a job left running by a killed Snakemake finishes, then the re-run's job goes on."""
    base = tmp_path / "out.lock"
    child = holder(base)
    killer = subprocess.Popen([sys.executable, "-c", f"import os, signal, time; time.sleep(1); os.kill({child.pid}, 9)"])
    start = time.monotonic()
    with caplog.at_level("INFO", logger="repgeom.locks"):
        with rank_locks(base, "output 'out'", 0, 1, wait=True) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    killer.wait()
    assert time.monotonic() - start >= 0.9
    assert f"waiting: output 'out' is in use by process {child.pid}" in caplog.text
    assert "is free: going on" in caplog.text


def test_a_held_lock_names_its_holder_and_dies_with_it(holder, tmp_path):
    base = tmp_path / "out.lock"
    child = holder(base)
    with pytest.raises(LockedError) as caught:
        with exclusive_lock(rank_lock_path(base, 0), "output 'out'"):
            pass
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message
    assert f"output 'out' is in use by process {child.pid} on host " in message
    assert "since " in message and "time.sleep(600)" in message  # its command line
    assert f"kill {child.pid}" in message and "wait for that process to finish" in message
    assert json.loads(rank_lock_path(base, 0).read_text())["pid"] == child.pid

    child.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock with the process
    child.wait()
    with exclusive_lock(rank_lock_path(base, 0), "output 'out'") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.read_text() == ""  # released: emptied, never deleted


def test_ranks_of_one_job_do_not_block_each_other(holder, tmp_path):
    base = tmp_path / "group.lock"
    holder(base, rank=1, world_size=2)  # the other rank of this job
    with rank_locks(base, "group", 0, 2):
        pass
    # A second job of one rank meets the first job's rank 0 ...
    holder(base, rank=0, world_size=2)
    with pytest.raises(LockedError, match="group is in use by process"):
        with rank_locks(base, "group", 0, 1):
            pass


def test_a_leftover_rank_of_a_larger_job_blocks_rank_0(holder, tmp_path):
    """Rank 3 of an earlier 4-rank job is still alive (its rank 0 is gone): a new 2-rank job must not start."""
    base = tmp_path / "group.lock"
    leftover = holder(base, rank=3, world_size=4)
    with rank_locks(base, "group", 1, 2):  # rank 1 has no way to see it ...
        pass
    with pytest.raises(LockedError, match=f"process {leftover.pid} on host"):  # ... rank 0 checks
        with rank_locks(base, "group", 0, 2):
            pass
    leftover.send_signal(signal.SIGKILL)
    leftover.wait()
    with rank_locks(base, "group", 0, 2):
        pass


def cli_args(model, prompts, out):
    return ["--model", str(model), "--prompts", str(prompts), "--store", str(out / "store.zarr"), "--group", "m/c",
            "--accuracy-out", str(out / "acc.parquet"), "--chunk-rows", "10"]


def test_extraction_on_a_locked_group_stops_before_writing(holder, tiny_llama_dir, prompts_file, tmp_path, capsys):
    job = ExtractionJob(str(tiny_llama_dir), prompts_file, tmp_path / "store.zarr", "m/c", tmp_path / "acc.parquet")
    child = holder(job.lock_base)
    assert main(cli_args(tiny_llama_dir, prompts_file, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"repgeom.extract: error: store group 'm/c' of '{tmp_path / 'store.zarr'}' is in use by "
                          f"process {child.pid} on host ")
    assert not (tmp_path / "store.zarr").exists() and not (tmp_path / "acc.parquet").exists()
    # Another group of the same store is free.
    other = cli_args(tiny_llama_dir, prompts_file, tmp_path)
    other[other.index("m/c")] = "m/other"
    assert main(other) == 0


@pytest.mark.slow
def test_a_running_extraction_keeps_a_second_one_out(tiny_llama_dir, make_prompts, tmp_path, capsys):
    """Two real jobs on one group (a re-run while a killed workflow's job still runs): the second stops, the first
    finishes undisturbed."""
    prompts = tmp_path / "prompts.parquet"
    make_prompts(120).to_parquet(prompts)
    first_out = tmp_path / "first"
    first_out.mkdir()
    args = cli_args(tiny_llama_dir, prompts, tmp_path)
    args[args.index("--accuracy-out") + 1] = str(first_out / "acc.parquet")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "repgeom.extract", *args, "--max-batch-tokens", "100"],
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        lock = rank_lock_path(ExtractionJob(str(tiny_llama_dir), prompts, tmp_path / "store.zarr", "m/c",
                                            tmp_path / "acc.parquet").lock_base, 0)
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        assert main(cli_args(tiny_llama_dir, prompts, tmp_path)) == 1
        assert f"is in use by process {first.pid} on host " in capsys.readouterr().err
        assert not (tmp_path / "acc.parquet").exists()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert main(cli_args(tiny_llama_dir, prompts, tmp_path)) == 0  # free again: the group is complete, kept
