"""Rank and world size from torchrun or Slurm, and the few collectives the extraction and fine-tuning need
(`repgeom.launch` starts the ranks)."""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from repgeom.launch import LaunchError

# Data-parallel ranks only meet at the start and the end: a rank that finishes early waits at the final barrier
# for the slowest, which can take as long as an extraction.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_info_from_env() -> RankInfo:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, else one rank.

    Slurm's values are exported under torchrun's names, which torch.distributed and DeepSpeed read.
    """
    env = os.environ
    if "WORLD_SIZE" in env:
        info = RankInfo(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    elif "SLURM_NTASKS" in env:
        info = RankInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        env.update(RANK=str(info.rank), WORLD_SIZE=str(info.world_size), LOCAL_RANK=str(info.local_rank))
    else:
        return RankInfo(0, 1, 0)
    if not 0 <= info.rank < info.world_size:
        raise LaunchError(f"rank {info.rank} is outside world size {info.world_size} (check RANK/WORLD_SIZE)")
    return info


def init_process_group(info: RankInfo, zero3: bool, device: torch.device) -> None:
    """One process group per run of several ranks: gloo for data parallelism (barriers only), and the
    accelerator's backend through DeepSpeed under ZeRO-3, whose forward passes gather parameters collectively."""
    if dist.is_initialized() or (info.world_size == 1 and not zero3):
        return
    if info.world_size == 1:  # ZeRO-3 on one rank (offloading): a private rendezvous on this machine
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise LaunchError(f"{info.world_size} ranks but {', '.join(missing)} not set: launch with torchrun, "
                           "or export MASTER_ADDR (the first node) and MASTER_PORT under srun")
    if zero3:
        import deepspeed

        # DeepSpeed reads these from the environment (zero.Init places partitions on LOCAL_RANK's device).
        for name, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank)):
            os.environ.setdefault(name, str(value))
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False,
                                   timeout=BARRIER_TIMEOUT, rank=info.rank, world_size=info.world_size)
    else:
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size, timeout=BARRIER_TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_ranks_max(value: int, device: torch.device) -> int:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_ranks_any(flags, device: torch.device):
    """Element-wise OR over the ranks of a boolean vector (each rank's own findings); numpy in, numpy out."""
    import numpy as np

    flags = np.asarray(flags, dtype=bool)
    if not dist.is_initialized():
        return flags
    tensor = torch.from_numpy(flags.astype(np.int32)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.cpu().numpy().astype(bool)


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
