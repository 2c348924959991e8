"""Stage 3: forgetting confidence of each self-generated sample, and the selection D_U.

[derived, method.md] With Delta_s = -eta g_s (the sample's intended update) and
Delta_L = -eta g_L (the learning task's), the extra learning loss a sample causes is
1/2 (Delta_s - Delta_L)^T F (Delta_s - Delta_L) - const; eta drops out of the ranking, so

    fisher_distance  FC(s) = sum_i F_i (g_s,i - g_L,i)^2          (default)
    fisher_conflict         -sum_i F_i g_s,i g_L,i                 (first-order part only)
    cosine                  -cos(g_s, g_L)                          (no Fisher)
    random                  seeded uniform                          (baseline)

All four come from the same per-sample gradients in one streaming pass (no per-sample gradient
matrix of the whole set is kept). High score = learning this knowledge would pull the parameters
that matter for the learning task away from where it needs them = unlearn it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import dist as ddp
from .data import encode_rows
from .grads import iter_per_sample_grads

SELECTIONS = {"high": "selected", "low": "selected_low", "random": "selected_random", "cosine": "selected_cosine"}


def confidence_sums(model, encs: list, pad_id: int, fisher: dict, mean_grad: dict, engine: str = "vectorized",
                    chunk_size: int = 32, param_regex: str | None = None, progress=None) -> torch.Tensor:
    """(4, len(encs)) float64 on the model's device: per sample, sum F (g_s - g_L)^2,
    -sum g_s F g_L, g_s . g_L and |g_s|^2 over the selected parameters (no host sync inside)."""
    device = next(model.parameters()).device
    out = torch.zeros(4, len(encs), dtype=torch.float64, device=device)
    F = {k: v.to(device, torch.float64).flatten() for k, v in fisher.items()}
    gL = {k: v.to(device, torch.float64).flatten() for k, v in mean_grad.items()}
    for start, grads in iter_per_sample_grads(model, encs, pad_id, engine, chunk_size, param_regex, progress):
        rows = out[:, start:start + next(iter(grads.values())).shape[0]]
        for name, g in grads.items():
            if name not in F:
                raise KeyError(f"parameter {name} has no Fisher entry (fisher and confidence must select the same params)")
            g = g.double().flatten(1)
            f, gl = F[name], gL[name]
            rows[0] += ((g - gl) ** 2) @ f
            rows[1] -= g @ (f * gl)
            rows[2] += g @ gl
            rows[3] += (g * g).sum(1)
    return out


def confidence_scores(model, tok, rows: list[dict], fisher: dict, mean_grad: dict, max_length: int,
                      engine: str = "vectorized", chunk_size: int = 32, param_regex: str | None = None,
                      seed: int = 0, add_bos: bool = True) -> pd.DataFrame:
    """One row per sample with the columns score_<variant> for every variant above."""
    all_encs = encode_rows(tok, rows, max_length, add_bos)
    encs, _ = ddp.shard_even(all_encs)  # several processes: score a shard each, gather in the original order
    gl_norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in mean_grad.values())))
    with tqdm(total=len(encs), desc="confidence", mininterval=2, leave=False, disable=not ddp.is_main()) as bar:
        sums = confidence_sums(model, encs, tok.pad_token_id, fisher, mean_grad, engine, chunk_size, param_regex,
                               bar).cpu().numpy()
    if ddp.active():
        sums = np.stack([np.asarray(ddp.gather_sharded(a.tolist(), len(all_encs))) for a in sums])
    fdist, conflict, dot, norm2 = sums
    cos = dot / np.maximum(np.sqrt(norm2) * gl_norm, 1e-30)
    rnd = np.random.default_rng(seed).random(len(all_encs))
    return pd.DataFrame({
        "score_fisher_distance": fdist,
        "score_fisher_conflict": conflict,
        "score_cosine": -cos,
        "score_random": rnd,
        "grad_norm": np.sqrt(norm2),
    })


def _top(scores: pd.Series, k: int, ascending: bool) -> pd.Series:
    """Boolean mask of the k highest (or lowest) scores; ties broken by row order (stable)."""
    order = scores.sort_values(ascending=ascending, kind="mergesort").index[:k]
    mask = pd.Series(False, index=scores.index)
    mask[order] = True
    return mask


def select(df: pd.DataFrame, score: str, fraction: float, per_task: bool, seed: int) -> pd.DataFrame:
    """Add `confidence`, `rank` (1 = most confident) and the selection flags of every method:
    selected (top fraction by `confidence`), selected_low (same count, lowest), selected_random
    (same count, seeded), selected_cosine (same count, top by the cosine score)."""
    df = df.copy()
    df["confidence"] = df[f"score_{score}"]
    df["rank"] = df["confidence"].rank(ascending=False, method="first").astype("int64")
    groups = [df.index] if not per_task else [g.index for _, g in df.groupby("forget_task", sort=True)]
    for col in SELECTIONS.values():
        df[col] = False
    rng = np.random.default_rng(seed + 1)
    for idx in groups:
        sub = df.loc[idx]
        k = max(1, int(round(fraction * len(sub))))
        df.loc[idx, "selected"] = _top(sub["confidence"], k, ascending=False)
        df.loc[idx, "selected_low"] = _top(sub["confidence"], k, ascending=True)
        df.loc[idx, "selected_cosine"] = _top(sub["score_cosine"], k, ascending=False)
        pick = rng.choice(len(sub), size=k, replace=False)
        df.loc[idx, "selected_random"] = np.isin(np.arange(len(sub)), pick)
    for col in SELECTIONS.values():
        df[col] = df[col].astype(bool)
    return df


def auroc(scores, positive) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count 1/2)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
