"""Batch Spectral Shrinkage (Chen et al. 2019), the `bss` method's extra loss term: it shrinks the
smallest singular values of the batch's features, the directions a fine-tune transfers least."""
from __future__ import annotations

import torch

from .data import IGNORE


def bss_term(features: torch.Tensor, k: int, eta: float) -> torch.Tensor:
    """Batch Spectral Shrinkage (Chen et al. 2019): eta * sum of the k smallest squared singular
    values of the (batch x hidden) feature matrix."""
    s = torch.linalg.svdvals(features.float())  # descending
    return eta * (s[-k:] ** 2).sum()


def pooled_target_features(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Final hidden state mean-pooled over each row's target tokens (the BSS features)."""
    m = (labels != IGNORE).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
