"""The jobs Snakemake would run, with their dependencies, read from the workflow's own dry run.

`snakemake --dry-run` prints every job it would start: rule, wildcards, inputs, outputs, benchmark file and
resources (the hardware map already applied). A job depends on the jobs that write its inputs. The fine-tuned
conditions join the DAG only once the `sample` checkpoint has run (their checkpoints follow from the fine-tuning
set's size): before that, `with_finetuned_conditions` adds them as copies of the 0-shot condition's jobs, each
waiting for its training run, which is what the DAG becomes after sampling.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from repgeom.conditions import shot_condition
from repgeom.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
SNAKEFILE = ROOT / "Snakefile"
# Jobs with these wildcards are one condition's; the prompts of a fine-tuned condition are the 0-shot ones.
PER_CONDITION_SHARED = ("prompts",)
# What a dry run prints for inputs that an input function can only give once a checkpoint has run.
UNKNOWN_INPUTS = "<TBD>"


@dataclass(frozen=True)
class Job:
    jobid: str
    rule: str
    wildcards: dict
    resources: dict
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    benchmark: str | None = None
    local: bool = False          # runs in the Snakemake process (a `localrules` rule, or `all`)
    deps: frozenset = field(default_factory=frozenset)   # jobids of the jobs writing this one's inputs

    @property
    def gpus(self) -> int:
        return int(self.resources.get("gpu", 0) or 0)

    @property
    def cpus(self) -> int:
        return int(self.resources.get("cpus_per_task", 1) or 1)

    @property
    def name(self) -> str:
        """rule[wildcard values]: how the plan names a job to the user."""
        values = ", ".join(f"{k}={v}" for k, v in self.wildcards.items())
        return f"{self.rule}[{values}]" if values else self.rule


def local_rules(snakefile: Path = SNAKEFILE) -> set[str]:
    """The rules the Snakefile's `localrules:` directives name (a dry run does not mark them)."""
    blocks = re.findall(r"localrules:\n((?:\s+\w+,\n)+)", snakefile.read_text())
    return {name for block in blocks for name in re.findall(r"(\w+),", block)}


def _pairs(value: str) -> dict:
    pairs = (item.split("=", 1) for item in value.split(", ") if "=" in item)
    return {key: int(v) if v.isdigit() else v for key, v in pairs}


def parse_dry_run(text: str, local: Iterable[str] = ()) -> list[Job]:
    """The jobs of a dry run's output, each with the jobids of the jobs that write its inputs."""
    local, raw = set(local), []
    for line in text.splitlines():
        header = re.fullmatch(r"(local)?(?:rule|checkpoint) (\S+):", line.strip())
        if header and not line.startswith(" "):
            raw.append({"rule": header.group(2), "local": bool(header.group(1)) or header.group(2) in local,
                        "wildcards": {}, "resources": {}})
        elif raw and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            if key in ("wildcards", "resources"):
                raw[-1][key] = _pairs(value)
            elif key in ("input", "output"):
                raw[-1][key] = tuple(path.strip() for path in value.split(", "))
            elif key in ("jobid", "benchmark"):
                raw[-1][key] = value.strip()
    jobs = [Job(jobid=item.get("jobid", str(n)), rule=item["rule"], wildcards=item["wildcards"],
                resources=item["resources"], inputs=item.get("input", ()), outputs=item.get("output", ()),
                benchmark=item.get("benchmark"), local=item["local"] or not item.get("output"))
            for n, item in enumerate(raw)]
    return link(jobs)


def link(jobs: list[Job]) -> list[Job]:
    """Each job's `deps`: the jobs writing one of its inputs (or a file inside an output folder)."""
    writers = {path: job.jobid for job in jobs for path in job.outputs}

    def writer(path: str) -> str | None:
        while path and path not in writers:
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            path = parent if parent != path else ""
        return writers.get(path)

    linked = [replace(job, deps=frozenset(w for w in map(writer, job.inputs) if w and w != job.jobid))
              for job in jobs]
    for n, job in enumerate(linked):  # one at a time: a later one sees an earlier one's deps (no cycle)
        if job.inputs == (UNKNOWN_INPUTS,):
            linked[n] = replace(job, deps=_everything_before(job, linked))
    return linked


def _everything_before(job: Job, jobs: list[Job]) -> frozenset:
    """The deps of a job whose inputs wait for a checkpoint (an aggregate over conditions): every job that does
    not itself wait for it."""
    dependents, after, frontier = {}, {job.jobid}, [job.jobid]
    for other in jobs:
        for dep in other.deps:
            dependents.setdefault(dep, []).append(other.jobid)
    while frontier:
        for nxt in dependents.get(frontier.pop(), []):
            if nxt not in after:
                after.add(nxt)
                frontier.append(nxt)
    return frozenset(other.jobid for other in jobs if other.jobid not in after)


def dry_run(config_path: str | Path, forceall: bool = False, workdir: str | Path | None = None) -> str:
    """The workflow's dry run for a config: its printed jobs. A config the workflow refuses is an InputError with
    Snakemake's own message (which names the key at fault)."""
    # The workflow's profile by its absolute path: Snakemake would take a folder named like it in the working
    # directory for it.
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--dry-run", "--cores", "1",
               "--workflow-profile", str(ROOT / "profiles" / "default"),
               "--configfile", str(Path(config_path).resolve()), "--nocolor"]
    if forceall:
        command.append("--forceall")
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines()
                 if line.strip() and not line.startswith(("Using workflow specific profile", "Building DAG",
                                                           "Assuming unrestricted", "Config file"))]
        raise InputError(f"the workflow refuses {config_path}: " + " ".join(lines[:12]))
    return result.stdout + result.stderr


def with_finetuned_conditions(jobs: list[Job], finetuned: Mapping[str, str]) -> list[Job]:
    """Add the jobs of each fine-tuned condition (`condition -> method`) when the dry run lacks them: copies of the
    0-shot condition's jobs (but its prompts, which the fine-tuned conditions read), waiting for the training run
    of their method; jobs across conditions wait for the copies as they wait for the 0-shot jobs."""
    present = {job.wildcards.get("condition") for job in jobs}
    missing = {condition: method for condition, method in finetuned.items() if condition not in present}
    base = shot_condition(0)
    originals = [job for job in jobs if job.wildcards.get("condition") == base and job.rule not in PER_CONDITION_SHARED]
    if not missing or not originals:
        return jobs
    trainers = {(job.wildcards.get("model"), job.wildcards.get("method")): job.jobid
                for job in jobs if job.rule == "finetune"}
    copied_ids = {job.jobid for job in originals}
    added, copies_of = [], {job.jobid: [] for job in originals}
    for condition, method in sorted(missing.items()):
        for job in originals:
            jobid = f"{job.jobid}:{condition}"
            copies_of[job.jobid].append(jobid)
            deps = {f"{dep}:{condition}" if dep in copied_ids else dep for dep in job.deps}
            trainer = trainers.get((job.wildcards.get("model"), method))
            if job.rule == "extract" and trainer is not None:
                deps.add(trainer)
            added.append(replace(
                job, jobid=jobid, wildcards={**job.wildcards, "condition": condition}, deps=frozenset(deps),
                inputs=(), outputs=tuple(_renamed(path, base, condition) for path in job.outputs),
                benchmark=_renamed(job.benchmark, base, condition) if job.benchmark else None))
    updated = [replace(job, deps=job.deps | {c for dep in job.deps if dep in copies_of for c in copies_of[dep]})
               if job.wildcards.get("condition") != base else job for job in jobs]
    return updated + added


def _renamed(path: str, old: str, new: str) -> str:
    return re.sub(rf"(?<=/){re.escape(old)}(?=[/.])", new, path)
