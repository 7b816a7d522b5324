"""One process or many: the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) read into
:class:`DistInfo`, process-group set-up (NCCL on CUDA, Gloo on CPU) and the few collectives training
needs. With a single process every function is a no-op, so the same command runs on one CPU, one GPU
or ``torchrun --nproc_per_node N -m geo4d_cli train …``.

Example:
    >>> info = DistInfo()
    >>> info.world_size, is_main(info), float(all_reduce_mean(torch.tensor(2.0), info))
    (1, True, 2.0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from geo4d.errors import InputError

__all__ = ["DistInfo", "dist_from_env", "init_distributed", "shutdown", "barrier", "is_main", "all_reduce_mean",
           "wrap_ddp", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world_size``, ``local_rank`` on its machine, its ``device``;
    ``initialised``: whether :func:`init_distributed` created the process group (and must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else CPU; ``cuda`` → ``cuda:<local_rank>``."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment {name}={value!r}: expected an integer (set by torchrun)") from None


def dist_from_env(device: str | torch.device = "auto") -> DistInfo:
    """The torchrun environment (defaults: a single process) and the device of this rank."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"environment RANK={rank} WORLD_SIZE={world}: not a valid rank")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=resolve_device(device, local))


def init_distributed(device: str | torch.device = "auto") -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, Gloo on CPU); a no-op for one process.

    Sets this rank's CUDA device. A process group that already exists is used as it is.
    """
    import torch.distributed as dist

    info = dist_from_env(device)
    if not info.distributed:
        return info
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if dist.is_initialized():
        return info
    backend = "nccl" if info.device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return DistInfo(info.rank, info.world_size, info.local_rank, info.device, initialised=True)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group :func:`init_distributed` created (nothing otherwise)."""
    import torch.distributed as dist

    if info.initialised and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    import torch.distributed as dist

    if info.distributed and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index or 0])
        else:
            dist.barrier()


def is_main(info: DistInfo) -> bool:
    """Rank 0: the one that writes files."""
    return info.rank == 0


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over the ranks (a copy; the value itself for one process)."""
    import torch.distributed as dist

    if not (info.distributed and dist.is_initialized()):
        return value
    out = value.detach().to(info.device, torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / info.world_size).to(value.dtype)


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """``module`` in :class:`torch.nn.parallel.DistributedDataParallel` (gradients averaged over the
    ranks in the backward pass) when there are several processes, else ``module`` itself."""
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index or 0] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
