"""Exclusive locks on output folders, so that a job left running (by a killed Snakemake, a lost Slurm step, a second
terminal) and a new job never write the same training folder or store group at once.

A lock is `fcntl.flock` on a lock file: the kernel releases it when its holder dies, however it dies (SIGKILL
included), so a lock never outlives its process and needs no clean-up. The holder writes its pid, host, start time
and command line into the file, and a second process that cannot take the lock stops at once with a `LockedError`
that names the holder, or, asked to wait, logs that message once and waits for the holder to finish (the
workflow's jobs wait: after a killed Snakemake, the job it left running finishes and the re-run's job then finds
its work done). Lock files are never deleted (deleting one while another process waits on it would let two
processes hold "the" lock on different files); they are emptied on release.

Standard library only: imported by the training and extraction entry points before torch is needed.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import glob
import json
import logging
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from repgeom.errors import InputError


log = logging.getLogger("repgeom.locks")


class LockedError(InputError):
    """Another live process holds the lock; the message names it (pid, host, since when) and says what to do."""


def holder_record() -> dict:
    """What a lock file says about its holder: this process."""
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            command = " ".join(part.decode(errors="replace") for part in handle.read().split(b"\0") if part)
    except OSError:
        command = " ".join([sys.executable, *sys.argv])
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command}


def read_holder(path: str | Path) -> dict | None:
    """The holder recorded in a lock file; None if it is empty (released, or its holder has not written yet)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def wait_for_holder(path: Path, seconds: float = 1.0) -> dict | None:
    """The holder's record, allowing it a moment to write it if it has just taken the lock."""
    deadline = time.monotonic() + seconds
    while (holder := read_holder(path)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def describe_holder(holder: dict | None) -> str:
    if holder is None:
        return "another process (it has not recorded itself yet)"
    command = " ".join(str(holder.get("command", "?")).split())  # one line
    if len(command) > 300:
        command = command[:297] + "..."
    return f"process {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')} (command: {command})"


def locked_message(what: str, path: str | Path, holder: dict | None) -> str:
    pid, host = (holder or {}).get("pid", "PID"), (holder or {}).get("host", "its host")
    return (f"{what} is in use by {describe_holder(holder)}, which holds the lock {str(path)!r}. Two writers would "
            f"corrupt it: wait for that process to finish, or, if it is a leftover of a killed run, stop it "
            f"(`kill {pid}` on {host}) and run this again")


@contextmanager
def exclusive_lock(path: str | Path, what: str, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive flock on the file `path` (created with its folder if need be) for the block.

    If another process holds it, raise `LockedError` at once, naming that process and `what` (the thing the lock
    protects, for the message); with `wait`, log that message and wait for the lock instead. The lock is released
    when the block ends or the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            message = locked_message(what, path, wait_for_holder(path))
            if not wait:
                raise LockedError(message) from None
            log.warning("waiting: %s", message)
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("the lock %r is free: going on", str(path))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
            yield path
        finally:
            os.ftruncate(fd, 0)  # before the unlock: the next holder writes its own record
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def rank_lock_path(base: str | Path, rank: int) -> Path:
    base = Path(base)
    return base.with_name(f"{base.name}.rank{rank}")


@contextmanager
def rank_locks(base: str | Path, what: str, rank: int, world_size: int, wait: bool = False) -> Iterator[Path]:
    """The lock of one rank of a job that writes `what`: the file `{base}.rank{rank}`.

    One file per rank, so that the ranks of one job never block each other and need no collective to take it (it is
    taken before the process group exists), while every rank of a second job on the same output meets the rank of the
    first job with its number; rank 0 is in every job, so a second job always fails on some rank, and on rank 0
    whenever the first job's rank 0 lives. Rank 0 also checks the files of ranks at or above `world_size`, which no
    rank of this job holds: a leftover rank of an earlier, larger job (say rank 3 of 4, still writing its own row
    chunks after rank 0 died) stops this job too."""
    with ExitStack() as stack:
        own = stack.enter_context(exclusive_lock(rank_lock_path(base, rank), what, wait))
        if rank == 0:
            base = Path(base)
            prefix = f"{base.name}.rank"
            others = sorted(path for path in base.parent.glob(f"{glob.escape(prefix)}*")
                            if path.name[len(prefix):].isdigit() and int(path.name[len(prefix):]) >= world_size)
            for path in others:
                with exclusive_lock(path, what, wait):  # free unless a leftover of an earlier job lives
                    pass
        yield own
