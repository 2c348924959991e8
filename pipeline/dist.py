"""Several processes / GPUs through Hugging Face Accelerate (launch, process group) and PyTorch
DDP (gradient all-reduce). With one process every function here is a no-op, so single-machine
users pay nothing.

Conventions: data is sharded by stride (rank r takes items r, r+W, r+2W, ...); sums are
all-reduced; per-item results are gathered back into the original order on every rank; only
rank 0 writes artifacts (see `pipeline/io.atomic_path`).
"""
from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1


def init() -> None:
    """Join the process group that `accelerate launch` describes (gloo on CPU, nccl on CUDA)."""
    import torch

    if active() and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        from accelerate import PartialState

        PartialState()


def local_device(device):
    import torch

    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(items: list) -> list:
    return items[rank()::world_size()] if active() else items


def all_reduce_sum_(t):
    import torch

    if active():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def gather_sharded(local: list, n: int) -> list:
    """Inverse of `shard`: every rank gets the full list of n items in the original order."""
    import torch

    if not active():
        return local
    parts: list = [None] * world_size()
    torch.distributed.all_gather_object(parts, local)
    out: list = [None] * n
    for r, part in enumerate(parts):
        out[r::world_size()] = part
    return out


def barrier() -> None:
    import torch

    if active():
        torch.distributed.barrier()
