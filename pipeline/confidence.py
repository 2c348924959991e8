"""Stage 3: forgetting confidence of each self-generated sample, and the selection D_U.

The published form (default; secondary sources, see docs/confidence.md): with theta*_L the learning
task's optimum approximated from D_L (the optimum stage), Delta_L = theta*_L - theta_base, F_L the
learning task's diagonal Fisher (at theta*_L or theta_base: `fisher.at`) and theta*(x) =
theta_base - alpha g_x one gradient step of size alpha (`confidence.alpha`) on the sample,

    optimum_distance FC(x) = 1/2 sum_i F_L,i (theta_base,i - alpha g_x,i - theta*_L,i)^2
                           = alpha^2/2 sum F_L g_x^2 + alpha sum F_L g_x Delta_L + 1/2 sum F_L Delta_L^2

(g_x: gradient of the sample's mean target-token NLL at theta_base). Small alpha: it ranks like the
directional term sum F_L g_x Delta_L; large alpha: like the sample's own size sum F_L g_x^2.

[derived, method.md] With Delta_s = -eta g_s (the sample's intended update) and
Delta_L = -eta g_L (the learning task's), the extra learning loss a sample causes is
1/2 (Delta_s - Delta_L)^T F (Delta_s - Delta_L) - const; eta drops out of the ranking, so

    fisher_distance  FC(s) = sum_i F_i (g_s,i - g_L,i)^2          (the published form with theta*_L
                                                                    = theta_0 - eta g_L, alpha = eta)
    fisher_conflict         -sum_i F_i g_s,i g_L,i                 (first-order part only)
    cosine                  -cos(g_s, g_L)                          (no Fisher)
    probe            C(s) with Delta_L = Delta_probe = theta_probe - theta_0 (method.md's `probe`
                     target) and Delta_s = -eta g_s, eta = the probe's LR:
                     1/2 (Delta_s - Delta_L)^T F (Delta_s - Delta_L) - 1/2 Delta_L^T F Delta_L
                       = eta^2/2 sum_i F_i g_s,i^2 + eta sum_i F_i g_s,i Delta_probe,i
                     (the published form up to a constant, theta*_L = a short probe, alpha = eta)
    loss_rise               l(s; theta_probe) - l(s; theta_0)      (how much plain learning on L
                                                                    pushes this knowledge away)
    random                  seeded uniform                          (baseline)

theta_probe = `confidence.probe.steps` plain AdamW steps on the learning task from theta_0.
Every gradient score comes from the same per-sample gradients in one streaming pass (no
per-sample gradient matrix of the whole set is kept). High score = learning this knowledge would
pull the parameters that matter for the learning task away from where it needs them = unlearn it.
`fisher_distance` grows with |g_s| (the sample's own uncertainty dominates it); `cosine` and
`loss_rise` do not scale with |g_s|; in `probe` the first-order (directional) term dominates
whenever eta |g_s| is small next to |Delta_probe|.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import dist as ddp
from .config import SCORES, SELECTIONS  # the option lists of confidence.score and methods.<m>.selection
from .data import encode_rows, sequence_nlls
from .grads import iter_per_sample_grads


def as_rows(table: pd.DataFrame) -> list[dict]:
    """Training rows (prompt, target) of self-knowledge / confidence-table rows; a response cut at
    max_new_tokens gets no EOS."""
    return [{"prompt": p, "target": r, "add_eos": not t}
            for p, r, t in zip(table["prompt"], table["response"], table["truncated"])]


def unlearn_set(table: pd.DataFrame, selection: str) -> list[dict]:
    """D_U of a selection rule: the confidence-table rows flagged by its column."""
    return as_rows(table[table[SELECTIONS[selection]]])


def unlearn_set_with_references(table: pd.DataFrame, selection: str) -> list[dict]:
    """D_U of a selection rule as the fine-tune reads it: each row with `ref_nll`, its mean token NLL
    under the base model (the reference of objectives such as NPO)."""
    sel = table[table[SELECTIONS[selection]]]
    return [dict(r, ref_nll=float(n)) for r, n in zip(as_rows(sel), sel["nll_base"])]


def probe_delta(model, tok, learn_rows: list[dict], probe, max_length: int, add_bos: bool = True,
                param_regex: str | None = None, replica=None, embeddings: str = "auto"):
    """theta_probe: `probe.steps` plain AdamW steps on the learning rows (constant LR, clip 1.0, no
    unlearning) from theta_0 = `model`'s weights. Trains `replica` (an unsharded copy of the base
    model: needed under FSDP) when given, else `model` itself in place. Returns (Delta_probe over
    the selected parameters, the probed model, a function that puts `model` back at theta_0)."""
    from .grads import select_params
    from .optimum import plain_finetune

    target = model if replica is None else replica
    trainable = [p for p in target.parameters() if p.requires_grad]
    theta0 = [p.detach().clone() for p in trainable] if replica is None else []
    before = {n: ddp.full_tensor(p).detach().double().clone()
              for n, p in select_params(model, param_regex, embeddings).items()}
    plain_finetune(target, tok, learn_rows, probe.steps, probe.lr, probe.batch_size, probe.seed, max_length, add_bos,
                   warmup_steps=0, desc="probe")
    delta = {n: ddp.full_tensor(p).detach().double().to(before[n].device) - before[n]
             for n, p in select_params(target, param_regex, embeddings).items()}

    def restore():
        with torch.no_grad():
            for p, p0 in zip(trainable, theta0):
                p.copy_(p0)
        model.eval()

    return delta, target, restore


def confidence_sums(model, encs: list, pad_id: int, fisher: dict, mean_grad: dict, engine: str = "vectorized",
                    chunk_size: int | str = 32, param_regex: str | None = None, progress=None,
                    delta: dict | None = None, embeddings: str = "auto", optimum: dict | None = None,
                    fisher_L: dict | None = None) -> torch.Tensor:
    """(8, len(encs)) float64 on the model's device: per sample, over the selected parameters,
    0 sum F (g_s - g_L)^2, 1 -sum g_s F g_L, 2 g_s . g_L, 3 |g_s|^2, 4 sum F g_s^2,
    5 sum F g_s Delta_probe (0 without `delta`), 6 sum F_L g_s^2 and 7 sum F_L g_s Delta_L
    (Delta_L = `optimum` = theta*_L - theta_base, 0 without it; F_L = `fisher_L`, default `fisher`).
    No host sync inside."""
    device = next(model.parameters()).device
    out = torch.zeros(8, len(encs), dtype=torch.float64, device=device)
    F = {k: v.to(device, torch.float64).flatten() for k, v in fisher.items()}
    FL = F if fisher_L is None else {k: v.to(device, torch.float64).flatten() for k, v in fisher_L.items()}
    gL = {k: v.to(device, torch.float64).flatten() for k, v in mean_grad.items()}
    D = {k: v.to(device, torch.float64).flatten() for k, v in (delta or {}).items()}
    DL = {k: v.to(device, torch.float64).flatten() for k, v in (optimum or {}).items()}
    for idx, grads in iter_per_sample_grads(model, encs, pad_id, engine, chunk_size, param_regex, progress, embeddings):
        rows = torch.zeros(8, len(idx), dtype=torch.float64, device=device)
        for name, g in grads.items():
            if name not in F or name not in FL:
                raise KeyError(f"parameter {name} has no Fisher entry (fisher and confidence must select the same params)")
            if optimum is not None and name not in DL:
                raise KeyError(f"parameter {name} has no Delta_L entry in artifacts/optimum.safetensors (optimum and "
                               "confidence must select the same params: rerun the optimum stage)")
            g = g.double().flatten(1)
            f, gl, fl = F[name], gL[name], FL[name]
            g2 = g * g
            rows[0] += ((g - gl) ** 2) @ f
            rows[1] -= g @ (f * gl)
            rows[2] += g @ gl
            rows[3] += g2.sum(1)
            rows[4] += g2 @ f
            if name in D:
                rows[5] += g @ (f * D[name])
            rows[6] += g2 @ fl
            if name in DL:
                rows[7] += g @ (fl * DL[name])
        out[:, idx.to(device)] = rows
    return out


def optimum_constant(optimum: dict, fisher_L: dict) -> float:
    """1/2 sum_i F_L,i Delta_L,i^2: the published score of a sample with zero gradient."""
    return 0.5 * sum(float((fisher_L[n].double().flatten().cpu() * d.double().flatten().cpu() ** 2).sum())
                     for n, d in optimum.items())


def confidence_scores(model, tok, rows: list[dict], fisher: dict, mean_grad: dict, max_length: int,
                      engine: str = "vectorized", chunk_size: int | str = 32, param_regex: str | None = None,
                      seed: int = 0, add_bos: bool = True, learn_rows: list[dict] | None = None,
                      probe=None, batch_size: int = 64, probe_replica=None, embeddings: str = "auto",
                      optimum: dict | None = None, alpha: float | None = None,
                      fisher_L: dict | None = None) -> pd.DataFrame:
    """One row per sample with the columns score_<variant> for every variant above (`probe` and
    `loss_rise` need `learn_rows` and the `probe` settings, `optimum_distance` needs `optimum`
    (Delta_L) and `alpha`; without them they are NaN), plus grad_norm, the sample's NLL under theta_0
    and theta_probe, and the two per-sample sums of the published form, opt_quadratic = 1/2 sum F_L g^2
    and opt_directional = sum F_L g Delta_L (score_optimum_distance = alpha^2 opt_quadratic + alpha
    opt_directional + 1/2 sum F_L Delta_L^2, so any other alpha can be read off the table), the
    sample-dependent part opt_sample_part = alpha^2 opt_quadratic + alpha opt_directional and its
    share of the score, opt_sample_share = opt_sample_part / score_optimum_distance (the rest,
    1/2 sum F_L Delta_L^2, is the same for every sample and cannot rank).
    `fisher_L`: the Fisher of the published form (default `fisher`: F at theta_base).
    `probe_replica`: an unsharded copy of the base model for the probe fine-tune (FSDP); by default
    `model` is probed in place and restored."""
    all_encs = encode_rows(tok, rows, max_length, add_bos)
    encs, _ = ddp.shard_even(all_encs)  # several processes: score a shard each, gather in the original order
    gl_norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in mean_grad.values())))
    # the probe first (it needs no gradients of theta_0); then the per-sample gradients at theta_0, and only
    # then forwards without gradients (after one, FSDP2 leaves the root's parameters gathered)
    delta = probed = restore = None
    if probe is not None and learn_rows:
        delta, probed, restore = probe_delta(model, tok, learn_rows, probe, max_length, add_bos, param_regex,
                                             probe_replica, embeddings)
        nll_probe = sequence_nlls(probed, encs, tok.pad_token_id, batch_size, desc="confidence NLL probed").cpu()
        restore()
    if optimum is not None and alpha is None:
        raise ValueError("the optimum_distance score needs its step size alpha (confidence.alpha)")
    with tqdm(total=len(encs), desc="confidence", mininterval=2, leave=False, disable=not ddp.is_main()) as bar:
        sums = confidence_sums(model, encs, tok.pad_token_id, fisher, mean_grad, engine, chunk_size, param_regex,
                               bar, delta, embeddings, optimum, fisher_L).cpu().numpy()
    nll0 = sequence_nlls(model, encs, tok.pad_token_id, batch_size, desc="confidence NLL at theta_0").cpu()
    if delta is None:
        nll_probe = torch.full_like(nll0, float("nan"))
    sums = np.concatenate([sums, torch.stack([nll0, nll_probe]).numpy()])
    if ddp.active():
        sums = np.stack([np.asarray(ddp.gather_sharded(a.tolist(), len(all_encs))) for a in sums])
    fdist, conflict, dot, norm2, fnorm2, fdelta, flnorm2, fldelta, nll0, nll_probe = sums
    cos = dot / np.maximum(np.sqrt(norm2) * gl_norm, 1e-30)
    rnd = np.random.default_rng(seed).random(len(all_encs))
    eta = probe.lr if delta is not None else float("nan")
    if optimum is not None:
        const = optimum_constant(optimum, fisher if fisher_L is None else fisher_L)
        quad, direc = 0.5 * flnorm2, fldelta
        part = alpha ** 2 * quad + alpha * direc  # the sample-dependent part; the rest is the same for all
        published = part + const
        share = part / np.where(published != 0, published, np.nan)
    else:
        quad = direc = published = part = share = np.full(len(all_encs), np.nan)
    return pd.DataFrame({
        "score_optimum_distance": published,
        "score_fisher_distance": fdist,
        "score_fisher_conflict": conflict,
        "score_cosine": -cos,
        "score_probe": 0.5 * eta ** 2 * fnorm2 + eta * fdelta,
        "score_loss_rise": nll_probe - nll0,
        "score_random": rnd,
        "grad_norm": np.sqrt(norm2),
        "nll_base": nll0,
        "nll_probe": nll_probe,
        "opt_quadratic": quad,
        "opt_directional": direc,
        "opt_sample_part": part,
        "opt_sample_share": share,
    })


def _top(scores: pd.Series, k: int, ascending: bool) -> pd.Series:
    """Boolean mask of the k highest (or lowest) scores; ties broken by row order (stable)."""
    order = scores.sort_values(ascending=ascending, kind="mergesort").index[:k]
    mask = pd.Series(False, index=scores.index)
    mask[order] = True
    return mask


def select(df: pd.DataFrame, score: str, fraction: float, per_task: bool, seed: int,
           positive: list[str] = ()) -> pd.DataFrame:
    """Add `confidence`, `rank` (1 = most confident) and the selection flags of every method:
    selected (top fraction by `confidence`), selected_low (same count, lowest), selected_random
    (same count, seeded), selected_cosine (same count, top by the cosine score), selected_published
    (same count, top by the published form, optimum_distance; none where it was not computed), selected_oracle
    (the same total count, seeded, drawn only from the `positive` tasks: the samples known to
    conflict; all of them if there are fewer)."""
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
        if "score_optimum_distance" in sub and sub["score_optimum_distance"].notna().all():
            df.loc[idx, "selected_published"] = _top(sub["score_optimum_distance"], k, ascending=False)
        pick = rng.choice(len(sub), size=k, replace=False)
        df.loc[idx, "selected_random"] = np.isin(np.arange(len(sub)), pick)
    pos = np.flatnonzero(df["forget_task"].isin(list(positive)).to_numpy())
    k = min(int(df["selected"].sum()), len(pos))
    pick = np.random.default_rng(seed + 2).choice(pos, size=k, replace=False) if k else []
    df["selected_oracle"] = np.isin(np.arange(len(df)), pick)
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


def published_form_stats(df: pd.DataFrame) -> dict:
    """How much of the published score depends on the sample: the constant 1/2 sum F_L Delta_L^2
    (score - opt_sample_part, the same for every sample), the score's range, the sample-dependent
    part's share of the score (opt_sample_share: median, median of its size, min, max) and
    spread_share, the score's spread over the samples (max - min) as a share of its median."""
    score, share = df["score_optimum_distance"], df["opt_sample_share"]
    const = float((score - df["opt_sample_part"]).median())
    med = float(score.median())
    return {"constant": const, "score_min": float(score.min()), "score_median": med, "score_max": float(score.max()),
            "sample_share_median": float(share.median()), "sample_share_abs_median": float(share.abs().median()),
            "sample_share_min": float(share.min()), "sample_share_max": float(share.max()),
            "spread_share": float((score.max() - score.min()) / med) if med else float("nan")}


def confidence_metrics(df: pd.DataFrame, c) -> dict:
    """metrics/confidence.json of a scored and selected table (`c`: params `confidence`): sizes,
    medians per task, mean NLL under theta_0 of each selection, and where the positive (known to
    conflict) and negative tasks are given, the AUROC of every score and the share of positives
    in each selection rule's D_U."""
    metrics = {"score": c.score, "alpha": c.alpha, "n_samples": len(df), "n_selected": int(df["selected"].sum()),
               "selected_by_task": {k: int(v) for k, v in df.groupby("forget_task")["selected"].sum().items()},
               "median_by_task": {k: {"confidence": float(g["confidence"].median()), "grad_norm": float(g["grad_norm"].median())}
                                  for k, g in df.groupby("forget_task")}}
    pos, neg = set(c.auroc_positive), set(c.auroc_negative)
    sub = df[df["forget_task"].isin(pos | neg)]
    if pos and neg and not sub.empty:
        y = sub["forget_task"].isin(pos).to_numpy()
        # two baselines beside the scores: the gradient's size, and the answer's length alone (a score
        # whose AUROC is at n_tokens' may see nothing but length)
        columns = [(s, f"score_{s}") for s in SCORES] + [(b, b) for b in ("grad_norm", "n_tokens") if b in df]
        metrics["auroc"] = {s: auroc(sub[col], y) for s, col in columns}
        metrics["auroc_by_negative"] = {}
        for neg_task in sorted(neg):
            one = df[df["forget_task"].isin(pos | {neg_task})]
            yy = one["forget_task"].isin(pos).to_numpy()
            metrics["auroc_by_negative"][neg_task] = {s: auroc(one[col], yy) for s, col in columns}
        metrics["auroc_positive"], metrics["auroc_negative"] = sorted(pos), sorted(neg)
        for name, col in SELECTIONS.items():
            metrics.setdefault("positive_share_of_selection", {})[name] = float(
                df.loc[df[col], "forget_task"].isin(pos).mean())
    if "opt_sample_share" in df and df["opt_sample_share"].notna().any():
        metrics["optimum_distance"] = published_form_stats(df)
    metrics["nll_base_of_selection"] = {name: float(df.loc[df[col], "nll_base"].mean()) for name, col in SELECTIONS.items()
                                        if df[col].any()}
    return metrics
