"""Stage 4: fine-tuning on the learning task with periodic unlearning (one loop for every method).

A method is data (`MethodConfig`): `unlearn` = none | periodic | early, `selection` = which rows
of the confidence table form D_U, `bss` = add the Batch Spectral Shrinkage term, `match_steps` =
vanilla with as many learning steps as LWF takes optimizer steps. The loop walks a precomputed
*schedule* of events:

    periodic  learn x N_u, unlearn, learn x N_u, unlearn, ...   (unlearn after learning step s
              whenever s % unlearn_every == 0; under `joint`, learning step s itself carries it)
    early     the same number of unlearning steps, all before the first learning step
    none      learning steps only (vanilla, bss)

Learning step: AdamW on mean_b l(x_b, y_b) (+ BSS term), clipped; the LR schedule
(`transformers.get_scheduler`: warmup, then constant / linear / cosine decay to 0 at the last
learning step) advances on learning steps only.

Unlearning step, by `finetune.unlearn_optimizer` (method.md's optimizer caveat):

    separate  theta <- theta + unlearn_lr * clip(grad mean_b l(u_b)): plain gradient ascent (SGD, no
              momentum, no state shared with learning), so the step IS the ascent direction and
              its size is set by `unlearn_lr` alone (`alpha` is not used)
    joint     learning step s (s % N_u == 0) optimises mean l(x_b, y_b) - alpha * mean l(u_b) in ONE
              AdamW step: alpha weighs the two gradients before Adam's normalisation
    shared    AdamW step on -alpha * mean l(u_b) with the learning steps' AdamW state: an ablation
              that documents the defect (momentum and Adam's normalisation make it mostly one
              more learning step; alpha hardly matters)

Unlearning steps are not scheduled: every one takes the same step size (separate: `unlearn_lr`;
shared: `lr`), so `early` and `periodic` differ only in when they unlearn. Guard: if the NLL on the
unlearning batch (measured in the step's own forward) is non-finite or above `unlearn_max_loss`,
the step (or, under joint, the unlearning term) is not taken and unlearning stops for the rest of
the run (logged and counted). A step whose gradient norm is non-finite is skipped.

Checkpoints (every `checkpoint_every` events) hold model, optimizer, scheduler, RNG states, the
event position and both stream counters, so a killed run resumes to the same final weights. A
checkpoint is resumed only when its fingerprint matches: every setting of the run plus digests of
the learning rows, the D_U rows and the starting weights (their content, not their count).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import dist
from .data import IGNORE, Stream, collate, encode_rows, forward_loss

log = logging.getLogger("lwf")


def build_schedule(max_steps: int, unlearn_every: int, mode: str, joint: bool = False) -> list[str]:
    """The ordered events of a run: 'learn', 'unlearn' (a step of its own) and, with `joint`,
    'joint' (a learning step that also carries the unlearning term)."""
    if mode == "none":
        return ["learn"] * max_steps
    if mode == "early":
        if joint:
            raise ValueError("unlearn 'early' has no learning step to join under unlearn_optimizer 'joint'")
        return ["unlearn"] * (max_steps // unlearn_every) + ["learn"] * max_steps
    if mode == "periodic":
        out = []
        for s in range(1, max_steps + 1):
            due = s % unlearn_every == 0
            out.append("joint" if due and joint else "learn")
            if due and not joint:
                out.append("unlearn")
        return out
    raise ValueError(f"unknown unlearning schedule {mode!r}")


def learning_steps(cfg, method) -> int:
    """Learning steps of a run: `max_steps`, plus one per scheduled unlearning step for a method
    with `match_steps` (vanilla_matched) when unlearning takes optimizer steps of its own."""
    extra = cfg.max_steps // cfg.unlearn_every if method.match_steps and cfg.unlearn_optimizer != "joint" else 0
    return cfg.max_steps + extra


def ascent_direction(model, tok, rows: list[dict], max_length: int, add_bos: bool = True):
    """(mean l over `rows`, its gradient flattened over all parameters): the direction an
    unlearning step on that batch ascends (the mechanism tests and benchmark compare with it)."""
    batch = collate(encode_rows(tok, rows, max_length, add_bos), tok.pad_token_id, next(model.parameters()).device)
    model.zero_grad(set_to_none=True)
    loss = forward_loss(model, batch)[0].mean()
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return loss.item(), g


def bss_term(features: torch.Tensor, k: int, eta: float) -> torch.Tensor:
    """Batch Spectral Shrinkage (Chen et al. 2019): eta * sum of the k smallest squared singular
    values of the (batch x hidden) feature matrix."""
    s = torch.linalg.svdvals(features.float())  # descending
    return eta * (s[-k:] ** 2).sum()


def pooled_target_features(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Final hidden state mean-pooled over each row's target tokens (the BSS features)."""
    m = (labels != IGNORE).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


from .config import LR_SCHEDULES as SCHEDULERS  # noqa: E402  (finetune.lr_schedule -> transformers name)


def lr_scheduler(opt, cfg, total_steps: int):
    """`transformers.get_scheduler`: linear warmup over `warmup_steps`, then constant, or linear /
    cosine decay reaching 0 after `total_steps` learning steps."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULERS[cfg.lr_schedule], opt, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=total_steps)


@dataclass
class RunState:
    event: int = 0
    n_learn: int = 0
    n_unlearn: int = 0
    unlearn_taken: int = 0
    unlearn_stopped_at: int | None = None
    skipped_nonfinite: int = 0
    rows: list = field(default_factory=list)


def _rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def autocast_context(device: torch.device, mixed_precision: str = "no"):
    """bf16 autocast for params `launch.mixed_precision: bf16` (the weights, gradients and AdamW
    state keep `model.dtype`: float32 weights + bf16 compute is classic mixed precision)."""
    import contextlib

    if mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rows_digest(rows: list[dict]) -> str:
    """Content digest of training rows (a changed D_U of the same size changes it)."""
    return fingerprint(rows)


def weights_digest(model) -> str:
    """Digest of a model's parameters and buffers, byte for byte (under FSDP a collective)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = dist.full_tensor(t).detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def finetune(model, tok, learn_rows: list[dict], unlearn_rows: list[dict], cfg, method, seed: int,
             max_length: int, add_bos: bool = True, ckpt_path: str | Path | None = None,
             run_id: str = "", stop_after_events: int | None = None, on_learn_step=None,
             mixed_precision: str = "no"):
    """Fine-tune `model` in place. Returns (log rows, stats). With several processes a model
    sharded by `dist.fsdp_wrap` trains under FSDP (gather the trained weights with
    `dist.full_state`), any other is wrapped in DistributedDataParallel. `mixed_precision` 'bf16':
    bf16 autocast. `stop_after_events` exists for the resume test: it simulates a crash after that
    many events (checkpoint written first); `on_learn_step(step)` is called after every learning
    step (learning curves, calibration)."""
    W = dist.world_size() if dist.active() else 1
    if W > 1 and method.bss:
        raise ValueError("the bss method runs in one process only (its SVD needs the whole batch)")
    if W > 1 and min(cfg.batch_size, cfg.unlearn_batch_size) < W:
        raise ValueError(f"finetune.batch_size and unlearn_batch_size must be >= the {W} processes")
    mode = cfg.unlearn_optimizer
    n_steps = learning_steps(cfg, method)
    schedule = build_schedule(n_steps, cfg.unlearn_every, method.unlearn, joint=mode == "joint")
    n_unlearn_sched = sum(e != "learn" for e in schedule)
    if n_unlearn_sched and not unlearn_rows:
        raise ValueError("this method unlearns but its selected set D_U is empty")
    learn_encs = encode_rows(tok, learn_rows, max_length, add_bos)
    unlearn_encs = encode_rows(tok, unlearn_rows, max_length, add_bos) if n_unlearn_sched else []
    learn_stream = Stream(len(learn_encs), cfg.batch_size, seed)
    unlearn_stream = Stream(len(unlearn_encs), cfg.unlearn_batch_size, seed + 1) if unlearn_encs else None

    torch.manual_seed(seed)
    model.train()
    # several processes: each takes a strided shard of every batch; DDP averages the gradients, and
    # every loss is scaled so that the average equals the single-process batch mean
    # (fsdp: the same, with gradients reduce-scattered to the process that holds each shard)
    fsdp = dist.is_fsdp(model)
    device = next(model.parameters()).device
    fwd = model
    if W > 1 and not fsdp:
        fwd = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ascent = torch.optim.SGD(params, lr=cfg.unlearn_lr) if mode == "separate" else None  # stateless: no momentum
    sched = lr_scheduler(opt, cfg, n_steps)
    st = RunState()

    ckpt_path = Path(ckpt_path) if ckpt_path else None
    fp = None
    if ckpt_path:  # content, not counts: a changed D_U, learning set or base model refuses the checkpoint
        fp = fingerprint(run_id, seed, cfg.model_dump(), method.model_dump(), rows_digest(learn_rows),
                         rows_digest(unlearn_rows if n_unlearn_sched else []), weights_digest(model),
                         "fsdp" if fsdp else "replica", mixed_precision)  # fsdp/replica: the two checkpoint formats
    if ckpt_path and cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") == fp:
            dist.load_full_state(model, opt, ck["model"], ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            st = RunState(**ck["state"])
            _set_rng_state(ck["rng"])
            log.info("stage finetune: resumed %s from event %d/%d", run_id, st.event, len(schedule))
        else:
            log.info("stage finetune: ignoring checkpoint %s (made with other settings, data or base model)", ckpt_path)

    def save_ckpt():
        from .io import atomic_path

        model_sd, opt_sd = dist.full_state(model, opt)  # a collective under FSDP: every rank calls it
        with atomic_path(ckpt_path) as tmp:
            torch.save({"fingerprint": fp, "model": model_sd, "optimizer": opt_sd,
                        "scheduler": sched.state_dict(), "state": st.__dict__, "rng": _rng_state()}, tmp)

    def step(loss, optimizer) -> bool:
        """One optimizer step on `loss` with clipping; a non-finite gradient skips it (counted)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(dist.full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))):
            optimizer.step()
            return True
        st.skipped_nonfinite += 1
        return False

    def forward(encs_all: list, idx: list[int], bss: bool = False):
        """Per-row losses of this process's shard of batch `idx` (+ hidden states for BSS)."""
        batch = collate([encs_all[i] for i in dist.shard(idx)], tok.pad_token_id, device)
        with autocast_context(device, mixed_precision):
            losses, out = forward_loss(fwd, batch, output_hidden_states=bss)
        return losses, out, batch

    def guard(v: float, lr: float) -> bool:
        """False (and unlearning stops for good) when the D_U batch NLL is non-finite or too high."""
        if math.isfinite(v) and v <= cfg.unlearn_max_loss:
            return True
        st.unlearn_stopped_at = st.n_learn
        log.warning("stage finetune: %s unlearning stopped after learning step %d (NLL on D_U %.3g > bound %g)",
                    run_id, st.n_learn, v, cfg.unlearn_max_loss)
        st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn_stopped", "loss": v, "lr": lr})
        return False

    bar = tqdm(total=len(schedule), initial=st.event, desc=f"finetune {run_id}", mininterval=5, leave=False)
    while st.event < len(schedule):
        kind = schedule[st.event]
        if kind in ("learn", "joint"):
            idx = learn_stream.batch(st.n_learn)
            st.n_learn += 1
            lr = sched.get_last_lr()[0]
            if kind == "joint" and st.unlearn_stopped_at is None:
                # one forward over learning + D_U rows (one DDP forward per backward), split after
                uidx = unlearn_stream.batch(st.n_unlearn)
                st.n_unlearn += 1
                lsh, ush = dist.shard(idx), dist.shard(uidx)
                batch = collate([learn_encs[i] for i in lsh] + [unlearn_encs[i] for i in ush], tok.pad_token_id,
                                device)
                with autocast_context(device, mixed_precision):
                    both, out = forward_loss(fwd, batch, output_hidden_states=method.bss)
                losses, ulosses = both[:len(lsh)], both[len(lsh):]
                hidden, labels = ((out.hidden_states[-1][:len(lsh)], batch["labels"][:len(lsh)])
                                  if method.bss else (None, None))
                v = (dist.all_reduce_sum_(ulosses.detach().sum()) / len(uidx)).item()
                unlearn_term = guard(v, lr)
            else:
                losses, out, batch = forward(learn_encs, idx, method.bss)
                hidden, labels = (out.hidden_states[-1], batch["labels"]) if method.bss else (None, None)
                unlearn_term = False
            total = losses.sum() * (W / len(idx))
            loss = dist.all_reduce_sum_(losses.detach().sum()) / len(idx)
            if method.bss:
                total = total + bss_term(pooled_target_features(hidden, labels), cfg.bss_k, cfg.bss_eta)
            if unlearn_term:
                total = total - cfg.alpha * ulosses.sum() * (W / len(uidx))
            taken = step(total, opt)
            sched.step()
            if st.n_learn % cfg.log_every == 0 or st.n_learn == n_steps:
                st.rows.append({"event": st.event, "step": st.n_learn, "kind": "learn", "loss": loss.item(), "lr": lr})
            if unlearn_term:
                st.unlearn_taken += int(taken)
                st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn", "loss": v, "lr": lr})
            if on_learn_step is not None:
                on_learn_step(st.n_learn)
        elif st.unlearn_stopped_at is None:
            idx = unlearn_stream.batch(st.n_unlearn)
            st.n_unlearn += 1
            losses, _, _ = forward(unlearn_encs, idx)
            nll = losses.sum() * (W / len(idx))
            v = (dist.all_reduce_sum_(losses.detach().sum()) / len(idx)).item()  # one sync: the guard needs it
            lr = cfg.unlearn_lr if mode == "separate" else cfg.lr
            if guard(v, lr):
                if mode == "separate":  # SGD minimises -l(D_U): theta += unlearn_lr * clip(grad l)
                    taken = step(-nll, ascent)
                else:  # shared: the learning AdamW state, at the unscheduled learning LR
                    scheduled = [g["lr"] for g in opt.param_groups]
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr
                    taken = step(-cfg.alpha * nll, opt)
                    for g, old in zip(opt.param_groups, scheduled):
                        g["lr"] = old
                st.unlearn_taken += int(taken)
                st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn", "loss": v, "lr": lr})
        st.event += 1
        bar.update(1)
        if ckpt_path and (st.event % cfg.checkpoint_every == 0) and st.event < len(schedule):
            save_ckpt()
        if stop_after_events is not None and st.event >= stop_after_events:
            bar.close()
            if ckpt_path:
                save_ckpt()
            raise KeyboardInterrupt(f"simulated crash after {st.event} events")
    bar.close()
    model.eval()
    dist.barrier()  # every rank is done with the checkpoint before rank 0 removes it
    if ckpt_path and dist.is_main():
        ckpt_path.unlink(missing_ok=True)
    finite = all(torch.isfinite(dist.full_tensor(p)).all() for p in model.parameters())
    separate_steps = st.unlearn_taken if mode != "joint" else 0
    stats = {
        "learn_steps": st.n_learn,
        "optimizer_steps": st.n_learn + separate_steps,  # attempted: learning steps + ascent steps of their own
        "unlearn_optimizer": mode,
        "unlearn_steps_scheduled": n_unlearn_sched,
        "unlearn_steps_taken": st.unlearn_taken,
        "unlearn_stopped_at": st.unlearn_stopped_at,
        "skipped_nonfinite": st.skipped_nonfinite,
        "weights_finite": bool(finite),
        "d_u_size": len(unlearn_rows) if n_unlearn_sched else 0,
    }
    return st.rows, stats
