"""Rank and world size from torchrun or Slurm, and the few collectives the extraction and fine-tuning need
(`repgeom.launch` starts the ranks)."""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from repgeom.launch import GPUS_ENV, LaunchError

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


class NoCudaError(LaunchError):
    """The job was given GPUs, but this process's torch cannot use any (a CPU-only build, an old driver)."""


# Set to 1 where a job's GPUs are stand-ins (a test cluster's fake GRES devices): such a job runs on the CPU
# instead of stopping with NoCudaError.
FAKE_GPUS_ENV = "REPGEOM_FAKE_GPUS"


def gpus_given(env=None) -> tuple[int | None, str]:
    """(GPUs this job was given, where that was read): REPGEOM_JOB_GPUS (set by `repgeom.launch` from --gpus), else
    SLURM_GPUS_ON_NODE, else (None, "") when nothing says. CUDA_VISIBLE_DEVICES does not count: a shell may export
    it on a machine where the job was given no GPU."""
    env = os.environ if env is None else env
    for name in (GPUS_ENV, "SLURM_GPUS_ON_NODE"):
        value = env.get(name, "").strip()
        if value:
            try:
                count = int(value)
            except ValueError:
                raise LaunchError(f"{name} is not a number: {value!r}") from None
            return count, name
    return None, ""


def rank_device(info: RankInfo, gpus: int | None = None, source: str = "", *, cuda_available: bool | None = None,
                device_count: int | None = None) -> torch.device:
    """The device of this rank, the one mapping of the project (extraction, fine-tuning and DeepSpeed through
    `init_process_group`): GPU `local_rank % visible devices` when CUDA is usable, so that a rank that sees one GPU
    (`srun --ntasks N --gpus-per-task 1`) takes device 0 and torchrun's ranks on a node of N GPUs take one each;
    the CPU when the job was given no GPU (`gpus` 0) or CUDA is not usable.

    `gpus` (default: `gpus_given()`) is the number of GPUs the job was given; when it is above 0 and torch sees no
    CUDA device, this raises NoCudaError rather than running silently on the CPU, unless REPGEOM_FAKE_GPUS=1 says
    the GPUs are stand-ins. `cuda_available` and `device_count` default to torch's (tests fake them)."""
    if gpus is None:
        gpus, source = gpus_given()
    if gpus == 0:
        return torch.device("cpu")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if not available:
        if gpus and os.environ.get(FAKE_GPUS_ENV) != "1":
            raise NoCudaError(no_cuda_message(gpus, source))
        return torch.device("cpu")
    count = torch.cuda.device_count() if device_count is None else device_count
    return torch.device("cuda", info.local_rank % count)


def no_cuda_message(gpus: int, source: str) -> str:
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"this job was given {gpus} GPU(s) ({source or 'asked'}) but torch sees no usable CUDA device (torch "
            f"{torch.__version__}, {build}): install a torch build for this node's CUDA driver, or give the job no "
            "GPUs (hardware map `gpus: 0`) to run on the CPU")


def init_process_group(info: RankInfo, zero3: bool, device: torch.device, *, deepspeed: bool | None = None,
                       timeout: datetime.timedelta = BARRIER_TIMEOUT) -> None:
    """One process group per process, for a run of several ranks: gloo for data parallelism (barriers only), and
    the accelerator's backend (nccl on GPU, gloo on CPU) through DeepSpeed under ZeRO-3, whose forward passes gather
    parameters collectively, or whenever `deepspeed` is true (fine-tuning's engine, even on one rank). A single
    process that needs DeepSpeed gets a private rendezvous on this machine. The group lives as long as the process:
    DeepSpeed caches groups built on it, so a second run in the same process reuses it rather than making a new one.

    `deepspeed` defaults to `zero3`; `timeout` bounds every collective (the extraction's default, BARRIER_TIMEOUT,
    covers a rank that waits at the final barrier for the slowest)."""
    use_deepspeed = zero3 if deepspeed is None else deepspeed
    if dist.is_initialized() or (info.world_size == 1 and not use_deepspeed):
        return
    init_method = None
    if info.world_size == 1 and "MASTER_ADDR" not in os.environ:
        init_method = f"tcp://127.0.0.1:{free_port()}"
    else:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise LaunchError(f"{info.world_size} ranks but {', '.join(missing)} not set: launch with torchrun, "
                              "or export MASTER_ADDR (the first node) and MASTER_PORT under srun")
    if not use_deepspeed:
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size, timeout=timeout)
        return
    import deepspeed as ds

    # DeepSpeed reads these from the environment (a single process, or Slurm's names, has not set them).
    for name, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank)):
        os.environ.setdefault(name, str(value))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # DeepSpeed's engine and zero.Init take LOCAL_RANK as the index of the rank's GPU: it must be the device
        # `rank_device` chose (local rank 1 that sees one GPU uses device 0, which LOCAL_RANK=1 would not).
        os.environ["LOCAL_RANK"] = str(device.index if device.index is not None else torch.cuda.current_device())
    if info.world_size == 1:
        # A single rank has no peer to share memory with; DeepSpeed's shared-memory allreduce kernel would still be
        # compiled on a machine's first run (about a minute of a 2-core machine). Its op table is meant to be edited.
        ds.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ds.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False,
                        timeout=timeout, init_method=init_method, rank=info.rank, world_size=info.world_size)


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
