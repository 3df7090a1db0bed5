"""`python -m repgeom.launch [--gpus N] -- COMMAND ...`: run a stage on the GPUs its job was given.

With 0 or 1 GPU the command is executed as it is (the launcher replaces itself with it: no extra process,
no rendezvous). With N > 1 GPUs it runs N ranks on this node under torchrun:

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N --no-python COMMAND ...

so every rank gets RANK, LOCAL_RANK and WORLD_SIZE = N (what `repgeom.extract` and DeepSpeed read) and a
private rendezvous port, so several multi-GPU jobs can share a node. Under Slurm the ranks start inside the
job's allocation: in a job step (as snakemake-executor-plugin-slurm runs each job, `srun -n1 --gpus N`) torchrun
starts directly; in a batch script outside any step it is started through `srun --ntasks 1 --gpus N`, so the
step holds the GPUs.

N is `--gpus` when given (rules pass the hardware map's count from their params, never `resources.gpu`, which a
cluster's profile may replace by a `gres` string), else Slurm's SLURM_GPUS_ON_NODE, else the number of devices in
CUDA_VISIBLE_DEVICES, else 0. When the job has a CPU count (SLURM_CPUS_PER_TASK or `--cpus`) and OMP_NUM_THREADS is
unset, each rank gets an equal share of it.

Every rank runs on the node the launcher runs on. A Slurm job given more than one node (submitted without
`--nodes=1`: `--gpus=N` counts over the whole job), or fewer GPUs on this node than it starts ranks for, is refused
with the job's id, name and node list, before any rank starts.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from repgeom.errors import InputError, entry_point

TORCHRUN = ("-m", "torch.distributed.run")
# The GPUs the launched command was given (repgeom.distributed.gpus_given reads it: a job given GPUs that its torch
# cannot use stops instead of running on the CPU).
GPUS_ENV = "REPGEOM_JOB_GPUS"


class LaunchError(InputError):
    """The GPU count, the command, or the rank variables and rendezvous settings a rank reads cannot be used."""


def visible_devices(value: str | None) -> int | None:
    """How many devices CUDA_VISIBLE_DEVICES names: None when unset, 0 for "" or "-1" or NoDevFiles."""
    if value is None:
        return None
    devices = [d.strip() for d in value.split(",") if d.strip()]
    if not devices or devices[0] in ("-1", "NoDevFiles"):
        return 0
    return len(devices)


def gpu_count(requested: int | None, env: Mapping[str, str]) -> tuple[int, str]:
    """The number of ranks to start, and where it came from."""
    if requested is not None:
        if requested < 0:
            raise LaunchError(f"--gpus must be 0 or more, not {requested}")
        return requested, "--gpus"
    if env.get("SLURM_GPUS_ON_NODE", "").strip():
        try:
            return int(env["SLURM_GPUS_ON_NODE"]), "SLURM_GPUS_ON_NODE"
        except ValueError:
            raise LaunchError(f"SLURM_GPUS_ON_NODE is not a number: {env['SLURM_GPUS_ON_NODE']!r}") from None
    visible = visible_devices(env.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        return visible, "CUDA_VISIBLE_DEVICES"
    return 0, "no GPU given"


def check_one_node(gpus: int, env: Mapping[str, str]) -> None:
    """Refuse, under Slurm, a job whose allocation spans several nodes, or whose node holds fewer GPUs than `gpus`:
    every rank starts here, so the other nodes' GPUs would sit idle, and ranks here would share this node's."""
    if not env.get("SLURM_JOB_ID"):
        return
    job = f"Slurm job {env['SLURM_JOB_ID']} ({env.get('SLURM_JOB_NAME', '?')})"
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "?"
    n_nodes = _int_or_none(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES"))
    here = _int_or_none(env.get("SLURM_GPUS_ON_NODE"))
    if n_nodes is not None and n_nodes > 1:
        raise LaunchError(f"{job} was given {n_nodes} nodes ({nodes}), with {here if here is not None else 'no'} "
                          "GPU(s) on this one, but runs every rank here: submit it with --nodes=1 (the `nodes` "
                          "resource; the workflow sets it for every job)")
    if gpus > 1 and here is not None and here < gpus:
        raise LaunchError(f"{job} runs {gpus} ranks, but its node ({nodes}) holds {here} of its GPUs")


def in_slurm_allocation_outside_step(env: Mapping[str, str]) -> bool:
    """True in a Slurm batch script (the allocation's batch step), where new ranks need `srun` to get a step
    holding the GPUs; False inside an `srun` step (SLURM_STEP_ID set) or outside Slurm."""
    return bool(env.get("SLURM_JOB_ID")) and not env.get("SLURM_STEP_ID")


def build_command(command: Sequence[str], gpus: int, env: Mapping[str, str], python: str = sys.executable,
                  cpus: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv to execute and the environment variables to set, for `command` on `gpus` GPUs."""
    if not command:
        raise LaunchError("no command given: python -m repgeom.launch [--gpus N] -- COMMAND ...")
    if gpus <= 1:
        return list(command), {}
    argv = [python, *TORCHRUN, "--standalone", "--nnodes", "1", "--nproc-per-node", str(gpus), "--no-python",
            *command]
    extra_env = {}
    cpus = cpus if cpus is not None else _int_or_none(env.get("SLURM_CPUS_PER_TASK"))
    if "OMP_NUM_THREADS" not in env and cpus:
        extra_env["OMP_NUM_THREADS"] = str(max(1, cpus // gpus))
    if in_slurm_allocation_outside_step(env):
        srun = ["srun", "--ntasks", "1", "--nodes", "1", f"--gpus={gpus}", "--kill-on-bad-exit=1"]
        if cpus:
            srun.append(f"--cpus-per-task={cpus}")
        argv = srun + argv
    return argv, extra_env


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m repgeom.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, help="GPUs of this job (default: from Slurm or CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--cpus", type=int, help="CPUs of this job, shared among the ranks (default: Slurm's)")
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given: python -m repgeom.launch [--gpus N] -- COMMAND ...")
    return args


@entry_point("repgeom.launch")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gpus, source = gpu_count(args.gpus, os.environ)
    check_one_node(gpus, os.environ)
    command, extra_env = build_command(args.command, gpus, os.environ, cpus=args.cpus)
    shown = " ".join(f"{k}={v}" for k, v in extra_env.items()) + (" " if extra_env else "") + shlex.join(command)
    if args.print:
        print(shown)
        return 0
    print(f"repgeom.launch: {gpus} GPU(s) ({source}): {shown}", file=sys.stderr, flush=True)
    os.environ.update(extra_env, **{GPUS_ENV: str(gpus)})
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"repgeom.launch: cannot run {command[0]!r}: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
