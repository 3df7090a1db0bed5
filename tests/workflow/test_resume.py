"""Stale locks after a killed run (repgeom.workflow.resume, called by workflow/rules/resume.smk): removed only when the
process that held them is certainly gone, so that the same command resumes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_snakemake

from repgeom.workflow.resume import is_gone, process_start, record_run, remove_stale_lock, this_process


def dead_process() -> dict:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    record = {**this_process(), "pid": child.pid, "start": process_start(child.pid)}
    child.wait()
    return record


def stale_state(snakemake_dir: Path, *records: dict) -> None:
    (snakemake_dir / "locks").mkdir(parents=True)
    (snakemake_dir / "locks/0.input.lock").write_text("a\n")
    (snakemake_dir / "locks/0.output.lock").write_text("b\n")
    (snakemake_dir / "repgeom-runs").mkdir()
    for i, record in enumerate(records):
        (snakemake_dir / f"repgeom-runs/{record['host']}.{record['pid']}.{i}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_is_gone():
    assert not is_gone(this_process())
    assert is_gone(dead_process())
    assert is_gone({**this_process(), "start": -1}), "pid reused by a process started at another time"
    assert not is_gone({**dead_process(), "host": "elsewhere"}), "another host: cannot tell"
    assert not is_gone({**dead_process(), "boot": "another boot"})


@pytest.mark.slow
def test_lock_of_a_dead_process_is_removed(tmp_path):
    stale_state(tmp_path, dead_process())
    messages = []
    assert len(remove_stale_lock(tmp_path, warn=messages.append)) == 2
    assert not list((tmp_path / "locks").iterdir()) and not list((tmp_path / "repgeom-runs").iterdir())
    assert "Removed a stale lock" in messages[0]


@pytest.mark.slow
@pytest.mark.parametrize("other", [lambda: this_process(), lambda: {**dead_process(), "host": "login2"}],
                         ids=["alive", "other-host"])
def test_lock_that_may_be_held_is_kept(tmp_path, other):
    stale_state(tmp_path, dead_process(), other())
    assert remove_stale_lock(tmp_path, warn=pytest.fail) == []
    assert len(list((tmp_path / "locks").iterdir())) == 2
    assert len(list((tmp_path / "repgeom-runs").iterdir())) == 1, "the dead process's record is cleaned up"


def test_unrecorded_lock_is_kept(tmp_path):
    stale_state(tmp_path)
    assert remove_stale_lock(tmp_path, warn=pytest.fail) == []
    assert len(list((tmp_path / "locks").iterdir())) == 2


@pytest.mark.slow
def test_record_lasts_as_long_as_the_process(tmp_path):
    code = f"from repgeom.workflow.resume import record_run; import os; p = record_run({str(tmp_path)!r}); print(p); os.chdir('/')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith(".json")
    assert not Path(result.stdout.strip()).exists(), "removed at exit, even after a change of directory"
    path = record_run(tmp_path)
    assert json.loads(path.read_text()) == this_process()
    assert path.name == f"{socket.gethostname()}.{os.getpid()}.json"


@pytest.mark.slow
def test_workflow_removes_a_stale_lock_when_it_starts(tmp_path):
    """Through the workflow: the same command that Snakemake refused after a kill now starts."""
    stale_state(tmp_path / ".snakemake", dead_process())
    result = run_snakemake("--cores", "1", "--dry-run", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Removed a stale lock" in result.stdout + result.stderr
    assert not list((tmp_path / ".snakemake/locks").glob("*.lock"))
    assert not list((tmp_path / ".snakemake/repgeom-runs").iterdir()), "the dry run's own record is gone too"
