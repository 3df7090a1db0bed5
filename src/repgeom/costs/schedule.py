"""The wall time of a run on a cluster: list scheduling of the workflow's DAG on NODES nodes of GPUS_PER_NODE GPUs.

Each job starts once every job it depends on has finished, on one node with its GPUs and cores free (every job is
one node's, as the hardware map asks: `nodes: 1`). Among the jobs ready at a moment, the one with the longest chain
of work still behind it goes first (the critical path), which a scheduler that sees the whole DAG approximates.
Local jobs (tables, figures) run in the Snakemake process and take no node.
"""
from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from repgeom.costs.dag import Job
from repgeom.errors import InputError

# Cores per GPU where the cluster spec does not say: a DGX A100 node has 128 cores for its 8 GPUs.
DEFAULT_CPUS_PER_GPU = 16


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    cpus_per_node: int

    @classmethod
    def parse(cls, spec: str, default_cpus: int) -> "Cluster":
        """`NODESxGPUS_PER_NODE`, optionally `:CPUS_PER_NODE` (default: 16 per GPU, or `default_cpus` without GPUs)."""
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*(?::\s*(\d+))?\s*", spec)
        if not match or int(match[1]) < 1:
            raise InputError(f"--cluster {spec!r}: give NODESxGPUS_PER_NODE[:CPUS_PER_NODE], e.g. 4x8 or 1x0:16")
        nodes, gpus = int(match[1]), int(match[2])
        cpus = int(match[3]) if match[3] else (gpus * DEFAULT_CPUS_PER_GPU or default_cpus)
        return cls(nodes, gpus, cpus)

    def __str__(self) -> str:
        return f"{self.nodes} x {self.gpus_per_node} GPUs ({self.cpus_per_node} cores a node)"


@dataclass(frozen=True)
class Schedule:
    makespan_s: float
    start: Mapping[str, float]
    node: Mapping[str, int | None]


def misfits(jobs: Sequence[Job], cluster: Cluster) -> list[str]:
    """One line per job no node of the cluster can hold."""
    lines = []
    for job in jobs:
        if job.local:
            continue
        if job.gpus > cluster.gpus_per_node:
            lines.append(f"{job.name} needs {job.gpus} GPUs on one node, but the cluster's nodes have "
                         f"{cluster.gpus_per_node}")
        elif job.cpus > cluster.cpus_per_node:
            lines.append(f"{job.name} needs {job.cpus} cores on one node, but the cluster's nodes have "
                         f"{cluster.cpus_per_node}")
    return lines


def bottom_levels(jobs: Sequence[Job], seconds: Mapping[str, float]) -> dict[str, float]:
    """Each job's own time plus the longest chain of jobs waiting for it."""
    dependents: dict[str, list[str]] = {job.jobid: [] for job in jobs}
    for job in jobs:
        for dep in job.deps:
            dependents.setdefault(dep, []).append(job.jobid)
    level: dict[str, float] = {}

    def visit(jobid: str) -> float:
        if jobid not in level:
            level[jobid] = seconds.get(jobid, 0.0) + max((visit(d) for d in dependents[jobid]), default=0.0)
        return level[jobid]

    for job in jobs:
        visit(job.jobid)
    return level


def list_schedule(jobs: Sequence[Job], seconds: Mapping[str, float], cluster: Cluster) -> Schedule:
    problems = misfits(jobs, cluster)
    if problems:
        raise InputError(problems[0])
    by_id = {job.jobid: job for job in jobs}
    priority = bottom_levels(jobs, seconds)
    waiting = {job.jobid: {dep for dep in job.deps if dep in by_id} for job in jobs}
    free = [[cluster.gpus_per_node, cluster.cpus_per_node] for _ in range(cluster.nodes)]
    ready = [jobid for jobid, deps in waiting.items() if not deps]
    running: list[tuple[float, str]] = []
    start, node, now = {}, {}, 0.0
    while ready or running:
        ready.sort(key=lambda jobid: (-priority[jobid], jobid))
        for jobid in list(ready):
            job = by_id[jobid]
            slot = None if job.local else next(
                (i for i, (g, c) in enumerate(free) if g >= job.gpus and c >= job.cpus), -1)
            if slot == -1:
                continue
            if slot is not None:
                free[slot][0] -= job.gpus
                free[slot][1] -= job.cpus
            ready.remove(jobid)
            start[jobid], node[jobid] = now, slot
            heapq.heappush(running, (now + seconds.get(jobid, 0.0), jobid))
        now, done = heapq.heappop(running)
        job = by_id[done]
        if node[done] is not None:
            free[node[done]][0] += job.gpus
            free[node[done]][1] += job.cpus
        for other, deps in waiting.items():
            if done in deps:
                deps.discard(done)
                if not deps and other not in start and other not in ready:
                    ready.append(other)
    return Schedule(makespan_s=now, start=start, node=node)
