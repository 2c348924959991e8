"""A plain fine-tune on the learning task (learning steps only) and theta*_L, the learning task's
optimum as the published forgetting confidence uses it.

`plain_finetune` is the whole learning side of `pipeline.train.finetune` for a method without
unlearning, written out on its own so that the confidence stage (its probe) and the optimum
stage do not import the fine-tuning loop (a change of that loop must not rerun them):

    torch.manual_seed(seed); batches from `data.Stream(n, batch_size, seed)`;
    step k: AdamW on mean_b l(x_b, y_b) (l = the mean target-token NLL of one row) by
    `pipeline.step.optimizer_step` (clipped; skipped when the gradient norm is non-finite);
    LR: linear warmup over `warmup_steps`, then constant (`pipeline.step.lr_scheduler`).

With the same settings it gives the weights `finetune(model, tok, rows, [], FinetuneConfig(...),
MethodConfig(), seed, ...)` gives, bit for bit (tests/test_optimum.py). Several processes: as
there, each takes a strided shard of every batch and DDP averages the gradients (an FSDP-sharded
model reduce-scatters them).

theta*_L (`optimum_delta`): `optimum.steps` such steps on D_L (the learning task's training rows)
from theta_base; the confidence stage reads Delta_L = theta*_L - theta_base over the parameters the
Fisher and the confidence select (artifacts/optimum.safetensors, `delta.<param>`, float64), and a
Fisher taken at theta*_L (`fisher.at: target`) rebuilds the model at theta*_L from `theta.<param>`
(every trainable parameter, in the model's dtype).
"""
from __future__ import annotations

import json
import logging
import math

import torch
from tqdm import tqdm

from . import dist
from .data import Stream, collate, encode_rows, forward_loss, sequence_nlls
from .step import lr_scheduler, optimizer_step

log = logging.getLogger("lwf")


def plain_finetune(model, tok, rows: list[dict], steps: int, lr: float, batch_size: int, seed: int,
                   max_length: int, add_bos: bool = True, warmup_steps: int = 0, grad_clip: float = 1.0,
                   weight_decay: float = 0.0, on_step=None, desc: str = "plain fine-tune") -> dict:
    """Train `model`'s trainable parameters in place for `steps` learning steps on `rows`; returns
    {"steps", "skipped_nonfinite", "first_loss", "last_loss"}. `on_step(k, loss)` is called after
    learning step k (1-based; learning curves)."""
    W = dist.world_size() if dist.active() else 1
    if W > 1 and batch_size < W:
        raise ValueError(f"batch_size {batch_size} must be >= the {W} processes")
    encs = encode_rows(tok, rows, max_length, add_bos)
    stream = Stream(len(encs), batch_size, seed)
    torch.manual_seed(seed)
    model.train()
    device = next(model.parameters()).device
    fwd = model
    if W > 1 and not dist.is_fsdp(model):
        fwd = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = dist.adamw(params, lr=lr, weight_decay=weight_decay)
    sched = lr_scheduler(opt, "constant", warmup_steps, steps)
    skipped, first, last = 0, None, None
    for k in tqdm(range(steps), desc=desc, mininterval=5, leave=False, disable=not dist.is_main()):
        idx = stream.batch(k)
        batch = collate([encs[i] for i in dist.shard(idx)], tok.pad_token_id, device)
        losses, _ = forward_loss(fwd, batch)
        skipped += not optimizer_step(losses.sum() * (W / len(idx)), params, opt, grad_clip)
        sched.step()
        loss = (dist.all_reduce_sum_(losses.detach().sum()) / len(idx)).item()
        first = loss if first is None else first
        last = loss
        if on_step is not None:
            on_step(k + 1, loss)
    model.eval()
    return {"steps": steps, "skipped_nonfinite": skipped, "first_loss": first, "last_loss": last}


def snapshot(model, names) -> dict[str, torch.Tensor]:
    """float64 copies of the named parameters (whole tensors under FSDP)."""
    params = dict(model.named_parameters())
    return {n: dist.full_tensor(params[n]).detach().double().clone() for n in names}


def validation_rows(learn_ref, n: int, data_seed: int) -> list[dict]:
    """`n` rows of the learning task's VALIDATION split (`learn_ref`: params `data.learn`), drawn with
    seed data.seed + 1: the held-out rows of early stopping (optimum stage) and of `fisher.at: heldout`
    (fisher stage), the same rows in both. Never the test split."""
    from .tasks import get_task

    task = get_task(learn_ref.task, learn_ref.options)
    if not task.has_validation:
        raise ValueError(f"task {learn_ref.task!r} has no validation split of its own "
                         "(missing, or it aliases the test split)")
    return task.load("validation", n, data_seed + 1, learn_ref.options)


class _EarlyStop(Exception):
    """Raised by the validation callback to end the plain fine-tune (patience used up)."""


def early_stopped_finetune(model, tok, learn_rows: list[dict], val_rows: list[dict], o, max_length: int,
                           add_bos: bool, batch_size: int = 64) -> dict:
    """The plain fine-tune of `o` (params `optimum`) on `learn_rows`, with its budget chosen by the
    learning task's held-out loss: every `o.eval_every` steps (and at step 0) the mean target-token
    NLL of `val_rows` (the learning task's VALIDATION split, never test); the trainable parameters
    of the evaluation with the lowest NLL are kept, and training stops after `o.patience`
    evaluations without a new lowest, or at `o.steps` (the largest budget). With a constant LR after
    warmup, the weights kept are those a run of `best_step` steps ends in. Leaves `model` at the
    best evaluation (eval mode); returns the fine-tune's stats plus best_step, val_nll_best,
    val_nll_base, steps_run, stopped_early and the curve {step: val NLL}."""
    val = encode_rows(tok, val_rows, max_length, add_bos)
    params = [p for p in model.parameters() if p.requires_grad]

    def val_nll() -> float:
        nll = float(sequence_nlls(model, val, tok.pad_token_id, batch_size).mean())
        model.train()  # sequence_nlls leaves eval mode; the fine-tune goes on
        return nll

    base = val_nll()
    model.eval()
    state = {"best": base, "best_step": 0, "since": 0, "steps_run": 0,
             "kept": [p.detach().clone() for p in params], "curve": {0: base}}

    def on_step(k: int, loss: float) -> None:
        state["steps_run"] = k
        state.setdefault("first_loss", loss)
        state["last_loss"] = loss
        if k % o.eval_every and k != o.steps:
            return
        nll = val_nll()
        state["curve"][k] = nll
        if nll < state["best"]:
            state.update(best=nll, best_step=k, since=0, kept=[p.detach().clone() for p in params])
        else:
            state["since"] += 1
            if state["since"] >= o.patience and k < o.steps:
                raise _EarlyStop

    stats: dict = {}
    try:
        stats = plain_finetune(model, tok, learn_rows, o.steps, o.lr, o.batch_size, o.seed, max_length, add_bos,
                               warmup_steps=o.warmup_steps, on_step=on_step, desc="optimum")
        stopped = False
    except _EarlyStop:
        stopped = True
        stats = {"steps": state["steps_run"], "skipped_nonfinite": None, "first_loss": state.get("first_loss"),
                 "last_loss": state.get("last_loss")}
    with torch.no_grad():
        for p, t in zip(params, state["kept"]):
            p.copy_(t)
    model.eval()
    stats.update({"best_step": state["best_step"], "val_nll_base": base, "val_nll_best": state["best"],
                  "steps_run": state["steps_run"], "stopped_early": stopped, "n_validation": len(val_rows),
                  "val_curve": {str(k): round(v, 6) for k, v in sorted(state["curve"].items())}})
    return stats


def optimum_delta(model, tok, learn_rows: list[dict], o, max_length: int, add_bos: bool, selected: list[str],
                  val_rows: list[dict] | None = None, batch_size: int = 64):
    """theta*_L from theta_base = `model`'s weights, in place (`o`: params `optimum`): with
    `val_rows` (the learning task's validation rows) and `o.eval_every` > 0, the early-stopped plain
    fine-tune of `early_stopped_finetune` (budget = the validation-NLL minimum within `o.steps`);
    otherwise exactly `o.steps` plain AdamW steps. Returns (Delta_L over `selected` (float64),
    theta*_L of every trainable parameter, stats)."""
    before = snapshot(model, selected)
    if val_rows and getattr(o, "eval_every", 0):
        stats = early_stopped_finetune(model, tok, learn_rows, val_rows, o, max_length, add_bos, batch_size)
    else:
        stats = plain_finetune(model, tok, learn_rows, o.steps, o.lr, o.batch_size, o.seed, max_length, add_bos,
                               warmup_steps=o.warmup_steps, desc="optimum")
        stats["best_step"] = o.steps
        if val_rows:
            val = encode_rows(tok, val_rows, max_length, add_bos)
            stats["val_nll_best"] = float(sequence_nlls(model, val, tok.pad_token_id, batch_size).mean())
    after = snapshot(model, selected)
    delta = {n: after[n] - before[n] for n in selected}
    theta = {n: dist.full_tensor(p).detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    finite = all(bool(torch.isfinite(t).all()) for t in theta.values())
    if not finite:
        raise ValueError("theta*_L has non-finite weights: lower optimum.lr")
    stats["delta_norm"] = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
    return delta, theta, stats


def save_optimum(path, delta: dict, theta: dict, meta: dict) -> None:
    """artifacts/optimum.safetensors: `delta.<param>` (Delta_L, float64) and `theta.<param>` (theta*_L
    of every trainable parameter); one sorted-JSON metadata key (same optimum -> same bytes)."""
    from safetensors.torch import save_file

    from .io import atomic_path

    tensors = {f"delta.{n}": t.cpu().contiguous() for n, t in delta.items()}
    tensors.update({f"theta.{n}": t.cpu().contiguous() for n, t in theta.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"lwf": json.dumps({k: str(v) for k, v in meta.items()}, sort_keys=True)})


def load_optimum(path, device="cpu") -> tuple[dict, dict, dict]:
    """(Delta_L, theta*_L, metadata) of `save_optimum`."""
    from safetensors import safe_open

    delta, theta = {}, {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = json.loads((f.metadata() or {}).get("lwf", "{}"))
        for k in f.keys():
            kind, name = k.split(".", 1)
            (delta if kind == "delta" else theta)[name] = f.get_tensor(k)
    return delta, theta, meta


def load_theta(model, theta: dict) -> None:
    """Put theta*_L into `model` (built like the optimum stage's: the same trainable parameters)."""
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(theta) != trainable:
        missing, extra = sorted(trainable - set(theta))[:3], sorted(set(theta) - trainable)[:3]
        raise ValueError(f"artifacts/optimum.safetensors does not match the model's trainable parameters "
                         f"(missing {missing}, unexpected {extra}): rerun the optimum stage (dvc repro)")
    with torch.no_grad():
        for n, t in theta.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
