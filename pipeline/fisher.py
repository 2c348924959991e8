"""Stage 1: diagonal Fisher of the base model on the learning task, and the mean learning gradient.

    F_i = (1/N) sum_n (d l(x_n, y_n; theta_0) / d theta_i)^2      (per-sample gradients, squared)
    g_L = (1/N) sum_n  d l(x_n, y_n; theta_0) / d theta

l is the mean target-token NLL of ONE sequence (per-sequence Fisher, not per-token). Squaring the
gradient of a batch mean would give F/B + (1 - 1/B)(E g)^2: a different quantity, never used here.
kind "empirical" uses the dataset targets y_n; kind "true" samples y_n from the model itself.
"""
from __future__ import annotations

import json
import logging

import torch
from tqdm import tqdm

from . import dist
from .data import encode_rows
from .grads import iter_per_sample_grads, select_params

log = logging.getLogger("lwf")


def fisher_and_mean_grad(model, tok, rows: list[dict], max_length: int, engine: str = "vectorized",
                         chunk_size: int | str = 32, param_regex: str | None = None, add_bos: bool = True,
                         embeddings: str = "auto"):
    """Return ({name: F}, {name: g_L}) over `rows` (prompt/target dicts)."""
    encs = encode_rows(tok, rows, max_length, add_bos)
    params = select_params(model, param_regex, embeddings)
    sq = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for n, p in params.items()}
    sm = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for n, p in params.items()}
    local, n_real = dist.shard_even(encs)  # several processes: each sums its shard, then the sums are all-reduced
    with tqdm(total=len(local), desc="fisher", mininterval=2, leave=False, disable=not dist.is_main()) as bar:
        for idx, grads in iter_per_sample_grads(model, local, tok.pad_token_id, engine, chunk_size, param_regex, bar,
                                                embeddings):
            padded = n_real < len(local)  # the padding of shard_even is not counted (decided without reading idx)
            for n, g in grads.items():
                g = (g[(idx < n_real).to(g.device)] if padded else g).double()
                sq[n] += (g * g).sum(0)
                sm[n] += g.sum(0)
    for t in (*sq.values(), *sm.values()):
        dist.all_reduce_sum_(t)
    N = len(encs)
    fisher = {n: (v / N).float().contiguous() for n, v in sq.items()}
    mean_grad = {n: (v / N).float().contiguous() for n, v in sm.items()}
    return fisher, mean_grad


def true_fisher_rows(model, tok, rows, max_new_tokens: int, seed: int, add_bos: bool = True) -> list[dict]:
    """Replace each target by a sample from the model (the "true" Fisher's y ~ p_theta(y|x))."""
    from .generation import generate

    gens = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, do_sample=True,
                    seed=seed, add_bos=add_bos)
    return [{"prompt": r["prompt"], "target": g["response"], "answer": r["answer"], "add_eos": not g["truncated"]}
            for r, g in zip(rows, gens)]


def save_fisher(path, fisher: dict, mean_grad: dict, meta: dict, fisher_target: dict | None = None) -> None:
    """artifacts/fisher.safetensors: `fisher.<param>` (F at theta_base), `grad.<param>` (g_L at
    theta_base) and, with `fisher.at: target`, `fisher_target.<param>` (F at theta*_L)."""
    from safetensors.torch import save_file

    from .io import atomic_path

    tensors = {f"fisher.{n}": t.cpu() for n, t in fisher.items()}
    tensors.update({f"grad.{n}": t.cpu() for n, t in mean_grad.items()})
    tensors.update({f"fisher_target.{n}": t.cpu() for n, t in (fisher_target or {}).items()})
    # one metadata key holding sorted JSON: safetensors writes a metadata map in a random order, so
    # several keys would give different bytes (and a needless DVC change) for the same Fisher
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"lwf": json.dumps({k: str(v) for k, v in meta.items()}, sort_keys=True)})


def load_fisher(path, device="cpu", at: str = "base") -> tuple[dict, dict, dict]:
    """(F, g_L, metadata); `at="target"`: F taken at theta*_L instead (g_L stays the mean learning
    gradient at theta_base), an error naming the fix if the file holds none."""
    from safetensors import safe_open

    parts: dict[str, dict] = {"fisher": {}, "grad": {}, "fisher_target": {}}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = json.loads((f.metadata() or {}).get("lwf", "{}"))
        for k in f.keys():
            kind, name = k.split(".", 1)
            parts[kind][name] = f.get_tensor(k)
    if at == "target":
        if not parts["fisher_target"]:
            raise ValueError(f"{path} holds no Fisher at theta*_L (made with fisher.at: base): rerun the fisher stage")
        return parts["fisher_target"], parts["grad"], meta
    return parts["fisher"], parts["grad"], meta


def fisher_summary(fisher: dict, mean_grad: dict, fisher_target: dict | None = None) -> dict:
    total = sum(float(v.double().sum()) for v in fisher.values())
    top = sorted(((float(v.double().sum()) / max(total, 1e-30), n) for n, v in fisher.items()), reverse=True)[:5]
    out = {
        "n_params": int(sum(v.numel() for v in fisher.values())),
        "fisher_trace": total,
        "mean_grad_norm": float(torch.sqrt(sum((v.double() ** 2).sum() for v in mean_grad.values()))),
        "top_fisher_share": {n: round(s, 4) for s, n in top},
    }
    if fisher_target:
        out["fisher_trace_at_target"] = sum(float(v.double().sum()) for v in fisher_target.values())
    return out
