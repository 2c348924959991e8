"""The optimizer step every training loop of the project takes (the fine-tune, theta*_L, the
lab's pretraining): one leaf function, so the three cannot drift apart.

    optimizer_step   zero the gradients, backward `loss`, clip the gradient norm, step unless the
                     norm is non-finite (then the step is skipped and reported)
    row_losses       l(x, y) per row: the mean NLL of its target tokens
    lr_scheduler     linear warmup over `warmup_steps`, then constant, or linear / cosine decay to 0
                     at `total_steps` (transformers' schedulers)
"""
from __future__ import annotations

import contextlib

import torch

from . import dist
from .config import LR_SCHEDULES  # params `finetune.lr_schedule` -> the name of the transformers scheduler


def optimizer_step(loss: torch.Tensor, params: list, optimizer, grad_clip: float) -> bool:
    """One clipped step of `optimizer` on `loss`; False (nothing changed) when the gradient norm is
    non-finite. Under FSDP the norm is the whole model's (a collective)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return clipped_update(params, optimizer, grad_clip)


def clipped_update(params: list, optimizer, grad_clip: float) -> bool:
    """The second half of `optimizer_step`, for gradients already in place (e.g. from an
    `accelerator.backward`): clip, then step unless the norm is non-finite."""
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(dist.full_tensor(norm)):
        return False
    optimizer.step()
    return True


def row_losses(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) the mean target-token NLL of each row, from per-token NLLs and their mask."""
    return nll.sum(1) / mask.sum(1).clamp_min(1)


def lr_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """The learning rate schedule of `schedule` (a key of LR_SCHEDULES) over `total_steps` steps."""
    from transformers import get_scheduler

    return get_scheduler(LR_SCHEDULES[schedule], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps)


def autocast_context(device: torch.device, mixed_precision: str = "no"):
    """bf16 autocast for `launch.mixed_precision: bf16` (weights, gradients and AdamW state keep
    `model.dtype`: float32 weights + bf16 compute is classic mixed precision)."""
    if mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
