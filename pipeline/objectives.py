"""Unlearning objectives: what an unlearning step minimises on a D_U batch. One small function each.

Every objective gets the same per-row quantities of ONE forward pass over the batch and returns a
per-row loss to *minimise* (shape (B,)); the fine-tuning loop sums it over the batch and scales it
to the batch mean (`pipeline.train.Finetune.unlearning_loss`, the only caller):

    nll   (B, K) per-token NLL of each row's target tokens (0 where `mask` is False)
    mask  (B, K) which tokens are targets; |y| = mask.sum(1), S_theta(y) = nll.sum(1)
    ref   (B,)   S_ref(y): the summed target NLL of the row under the reference model (the base
                 model), or None for objectives that need no reference. D_U is the base model's own
                 fixed output, so S_ref is a constant per row: the confidence table's `nll_base`
                 (mean token NLL under theta_0) times |y|, or one no-grad forward before training.

Notation: pi_theta(y|x) = exp(-S_theta(y)). Arguments (`methods.<m>.objective_args`) are the
keyword-only parameters of each function; their names and defaults are registered in
`pipeline/registry.py` (OBJECTIVE_ARGS), which params validation reads without importing torch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .registry import OBJECTIVE_ARGS, check_objective_args


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable
    needs_ref: bool

    @property
    def defaults(self) -> dict:
        return dict(OBJECTIVE_ARGS[self.name])

    def __call__(self, nll: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None, **args) -> torch.Tensor:
        if self.needs_ref and ref is None:
            raise ValueError(f"objective {self.name!r} needs the reference NLL of every D_U row")
        return self.fn(nll, mask, ref, **{**self.defaults, **args})


OBJECTIVES: dict[str, Objective] = {}


def objective(name: str, needs_ref: bool = False):
    def deco(fn):
        takes = [k for k, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if name not in OBJECTIVE_ARGS or takes != list(OBJECTIVE_ARGS[name]):
            raise TypeError(f"objective {name!r} takes {takes}; pipeline/registry.py OBJECTIVE_ARGS must list "
                            "the same arguments with their defaults")
        OBJECTIVES[name] = Objective(name, fn, needs_ref)
        return fn

    return deco


def _n_tokens(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(1).clamp_min(1)


@objective("ga")
def ga(nll, mask, ref):
    """Gradient ascent (the paper's step): minimise -S_theta(y)/|y|, the negated mean target-token
    NLL of the row. Unbounded below; every row keeps weight 1 however far it has been pushed."""
    return -(nll.sum(1) / _n_tokens(mask))


@objective("npo", needs_ref=True)
def npo(nll, mask, ref, *, beta: float):
    """NPO (Zhang et al. 2024, arXiv 2404.05868): minimise (2/beta) log(1 + (pi_theta / pi_ref)^beta)
    = -(2/beta) log sigmoid(beta (S_theta - S_ref)). Bounded below by 0. Its gradient is
    -w * grad S_theta with w = 2 pi_theta^beta / (pi_theta^beta + pi_ref^beta) = 2 sigmoid(beta (S_ref -
    S_theta)): 1 at the start (pi_theta = pi_ref), fading to 0 once the row is less likely than under
    the reference. beta -> 0 gives gradient ascent on the summed NLL S_theta (not the mean)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll.sum(1) - ref))


@objective("simnpo")
def simnpo(nll, mask, ref, *, beta: float, delta: float):
    """SimNPO (Fan et al., arXiv 2410.07163): minimise -(2/beta) log sigmoid(beta S_theta/|y| - delta),
    length-normalised, no reference. Gradient -(2/|y|) sigmoid(delta - beta S_theta/|y|) grad S_theta:
    its weight decays as the row's mean NLL rises. open-unlearning's defaults: beta 4.5, delta 0."""
    return -(2.0 / beta) * F.logsigmoid(beta * nll.sum(1) / _n_tokens(mask) - delta)


@objective("wga")
def wga(nll, mask, ref, *, beta: float):
    """Weighted gradient ascent (WGA, as in open-unlearning): every target token's NLL weighted by its
    probability p_t^beta (detached), negated and averaged over the row's tokens: -sum_t p_t^beta
    nll_t / |y|. A token already pushed to low probability stops being pushed (per-token fading, the
    token-level counterpart of NPO's weight, with no reference). beta 0 = ga."""
    w = torch.exp(-nll.detach()) ** beta
    return -((w * nll) * mask).sum(1) / _n_tokens(mask)


def check_args(name: str, args: dict) -> None:
    """ValueError naming the unknown objective or argument (pipeline.registry.check_objective_args)."""
    check_objective_args(name, args)
