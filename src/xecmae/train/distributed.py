"""The one owner of distributed state: who am I, how many are we, and the collectives we use.

Ranks come from torchrun (RANK, LOCAL_RANK, WORLD_SIZE) or from SLURM when a job step is
started by ``srun`` (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS). NCCL on GPUs, gloo on CPUs.
Everyone else asks this module instead of reading the environment.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


CPU = torch.device("cpu")


@dataclass(frozen=True)
class Context:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = CPU


_CONTEXT = Context()
_CONTROL: dist.ProcessGroup | None = None  # gloo group for host-side decisions when the default group is NCCL


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return default


def context_from_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun, else from srun, else a single process."""
    if "WORLD_SIZE" in os.environ:
        return (_env_int("RANK", default=0), _env_int("LOCAL_RANK", default=0), _env_int("WORLD_SIZE", default=1))
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        return (_env_int("SLURM_PROCID", default=0), _env_int("SLURM_LOCALID", default=0),
                _env_int("SLURM_NTASKS", default=1))
    return 0, 0, 1


def setup(backend: str = "auto", timeout_minutes: int = 30, device: str | None = None) -> Context:
    """Join the process group (when there is more than one process) and pick this rank's device."""
    global _CONTEXT, _CONTROL
    rank, local_rank, world_size = context_from_env()
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1)) if use_cuda else CPU
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        chosen = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        dist.init_process_group(chosen, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=dev if chosen == "nccl" else None)
        # flags that steer the loop are reduced on the CPU, so deciding reads nothing back from a GPU
        _CONTROL = dist.new_group(backend="gloo") if chosen == "nccl" else None
    _CONTEXT = Context(rank, local_rank, world_size, dev)
    return _CONTEXT


def cleanup() -> None:
    global _CONTEXT, _CONTROL
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT, _CONTROL = Context(), None


def context() -> Context:
    return _CONTEXT


def rank() -> int:
    return _CONTEXT.rank


def world_size() -> int:
    return _CONTEXT.world_size


def is_main() -> bool:
    return _CONTEXT.rank == 0


def is_distributed() -> bool:
    return dist.is_initialized() and _CONTEXT.world_size > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one: a MAX all-reduce of one integer on the CPU.

    Every rank must call it at the same point of the loop (it is a collective). With NCCL it
    goes through a gloo group, so no GPU stream is waited for.
    """
    if not is_distributed():
        return flag
    box = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_CONTROL)
    return bool(box[0])


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value of ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
