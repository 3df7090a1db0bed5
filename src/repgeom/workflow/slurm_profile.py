"""What profiles/slurm/config.yaml reads when Snakemake loads it: settings from environment variables, and the job
status command this cluster can answer.

snakemake-executor-plugin-slurm checks job status with `sacct` whenever the `sacct` command exists. On a cluster that
keeps no accounting, `sacct` exists but fails ("Slurm accounting storage is disabled"), and the plugin then waits for
job states that never come, with no message. So the profile asks `sacct` once, when it is read, and uses `squeue`
(with Slurm's MinJobAge keeping finished jobs visible) where `sacct` does not answer.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from repgeom.errors import InputError

# A query that any accounting-enabled cluster answers at once: this user's jobs of the last minute.
SACCT_PROBE = ["sacct", "--noheader", "--allocations", "--format=JobIdRaw", "--starttime", "now-60", "--endtime", "now"]
# MinJobAge under which squeue forgets a finished job before a status check sees it (the plugin's own threshold
# for its default 40 s between checks).
MIN_JOB_AGE_FOR_SQUEUE = 120


class ProfileError(InputError):
    """The profile cannot work on this cluster; the message names the setting to change."""


def setting(name: str, default=None, environ: Mapping[str, str] = os.environ):
    """An environment variable's value, else `default` (an empty variable counts as unset)."""
    return environ.get(name) or default


def profile_file(name: str, argv: Sequence[str] = sys.argv, environ: Mapping[str, str] = os.environ) -> str:
    """The absolute path of a file beside this profile's config.yaml. Snakemake turns a profile value naming such a
    file into a path relative to where it was started, which `--directory` then breaks; so the profile passes an
    absolute one, found from the `--profile` arguments (or SNAKEMAKE_PROFILE) as Snakemake finds the profile."""
    from snakemake.cli import get_profile_dir

    given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--profile"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--profile=")]
    given += [environ["SNAKEMAKE_PROFILE"]] if environ.get("SNAKEMAKE_PROFILE") else []
    for profile in given:
        found = get_profile_dir(profile)
        if found is not None and (found[0] / name).is_file():
            return str((found[0] / name).resolve())
    return name


def sacct_answers(run: Callable = subprocess.run) -> bool:
    if shutil.which("sacct") is None:
        return False
    try:
        return run(SACCT_PROBE, capture_output=True, text=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def min_job_age(run: Callable = subprocess.run) -> int | None:
    """Slurm's MinJobAge in seconds, from `scontrol show config` (None when it cannot be read)."""
    try:
        out = run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MinJobAge":
            digits = value.strip().split()[0] if value.strip() else ""
            return int(digits) if digits.isdigit() else None
    return None


def status_command(environ: Mapping[str, str] = os.environ, run: Callable = subprocess.run) -> str:
    """SLURM_STATUS_COMMAND if set; else `sacct` where it answers, else `squeue`. Stops with the setting to change
    where neither can see a finished job."""
    chosen = setting("SLURM_STATUS_COMMAND", environ=environ)
    if chosen:
        if chosen not in ("sacct", "squeue"):
            raise ProfileError(f"SLURM_STATUS_COMMAND is {chosen!r}: give sacct or squeue")
        return chosen
    if sacct_answers(run):
        return "sacct"
    age = min_job_age(run)
    if age is not None and age < MIN_JOB_AGE_FOR_SQUEUE:
        raise ProfileError(
            f"this cluster keeps no job accounting (`sacct` does not answer) and forgets finished jobs after "
            f"MinJobAge={age} s, before Snakemake can see them finish with `squeue`: ask the admins for accounting "
            f"or MinJobAge >= {MIN_JOB_AGE_FOR_SQUEUE}, or set SLURM_STATUS_COMMAND and "
            "--slurm-init-seconds-before-status-checks / --seconds-between-status-checks below MinJobAge / 3")
    return "squeue"
