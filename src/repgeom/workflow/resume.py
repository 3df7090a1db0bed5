"""Resuming after a killed run: stale Snakemake locks.

A Snakemake process killed hard (SIGKILL, a lost login session, the OOM killer) leaves its lock files in
.snakemake/locks, and the same command then refuses to start until someone runs `snakemake --unlock`. The
workflow (workflow/rules/resume.smk) calls `remove_stale_lock` and then `record_run` when its main process
starts: each main process records who it is (host, boot, pid, process start time) in .snakemake/repgeom-runs/
for as long as it runs. Lock files are stale, and removed, only when at least one recorded process has died on
this very machine and no other recorded process may still be running: a record from another host or boot, or
from a live process, leaves the lock alone, and Snakemake refuses as usual. A lock nobody recorded (another
workflow, an older version) is never touched.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")
RECORDS = "repgeom-runs"
LOCKS = "locks"


def boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        return int((PROC / str(int(pid)) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def this_process() -> dict:
    return {"host": socket.gethostname(), "boot": boot_id(), "pid": os.getpid(), "start": process_start(os.getpid())}


def is_gone(record: dict, here: dict | None = None) -> bool:
    """True when the recorded process is certainly not running: recorded on this host and boot, and its pid is
    free or now belongs to a process started at another time."""
    here = here or this_process()
    if not here["boot"] or record.get("host") != here["host"] or record.get("boot") != here["boot"]:
        return False
    start = process_start(record.get("pid"))
    return start is None or start != record.get("start")


def remove_stale_lock(snakemake_dir: str | os.PathLike = ".snakemake",
                      warn: Callable[[str], object] = print) -> list[str]:
    """Remove the lock files when every process that could hold them is gone; returns the removed files."""
    root = Path(snakemake_dir)
    locks = sorted((root / LOCKS).glob("*.lock")) if (root / LOCKS).is_dir() else []
    gone, alive = [], []
    for path in sorted((root / RECORDS).glob("*.json")) if (root / RECORDS).is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        (gone if is_gone(record) else alive).append((path, record))
    for path, _ in gone:
        path.unlink(missing_ok=True)
    if not (locks and gone and not alive):
        return []
    for path in locks:
        path.unlink(missing_ok=True)  # another start may remove them at the same time
    pids = ", ".join(str(record.get("pid")) for _, record in gone)
    warn(f"Removed a stale lock in {root / LOCKS}: the Snakemake process that held it (pid {pids} on this machine) "
         "is gone. Jobs it had started are redone where their outputs are incomplete. If it had submitted Slurm "
         "jobs that still run, cancel them first (squeue --me; scancel).")
    return [str(path) for path in locks]


def record_run(snakemake_dir: str | os.PathLike = ".snakemake") -> Path:
    """Record this process until it exits (the record stays behind if it is killed)."""
    records = Path(snakemake_dir).resolve() / RECORDS  # absolute: Snakemake changes directory before exiting
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{socket.gethostname()}.{os.getpid()}.json"
    path.write_text(json.dumps(this_process()))
    atexit.register(path.unlink, missing_ok=True)
    return path
