"""Stage 4: fine-tuning on the learning task with periodic unlearning (one loop for every method).

A method is data (`MethodConfig`): `unlearn` = none | periodic | early, `selection` = which rows
of the confidence table form D_U, `bss` = add the Batch Spectral Shrinkage term. The loop walks a
precomputed *schedule* of events:

    periodic  learn x N_u, unlearn, learn x N_u, unlearn, ...   (unlearn after learning step s
              whenever s % unlearn_every == 0)
    early     the same number of unlearning steps, all before the first learning step
    none      learning steps only (vanilla, bss)

Learning step: AdamW on mean_b l(x_b, y_b) (+ BSS term), clipped, LR schedule advances.
Unlearning step: the same optimizer on -alpha * mean_b l(s_b) over a batch of D_U (cycling),
clipped; the LR schedule does not advance. Guard: if the NLL on the unlearning batch (measured in
the step's own forward) is non-finite or above `unlearn_max_loss`, that step is not taken and
unlearning stops for the rest of the run (logged and counted). A step whose gradient norm is
non-finite is skipped.

Checkpoints (every `checkpoint_every` events) hold model, optimizer, scheduler, RNG states, the
event position and both stream counters, so a killed run resumes to the same final weights.
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
from .data import IGNORE, collate, encode_rows, forward_loss

log = logging.getLogger("lwf")


def build_schedule(max_steps: int, unlearn_every: int, mode: str) -> list[str]:
    """The ordered events of a run: 'learn' and 'unlearn'."""
    if mode == "none":
        return ["learn"] * max_steps
    if mode == "early":
        return ["unlearn"] * (max_steps // unlearn_every) + ["learn"] * max_steps
    if mode == "periodic":
        out = []
        for s in range(1, max_steps + 1):
            out.append("learn")
            if s % unlearn_every == 0:
                out.append("unlearn")
        return out
    raise ValueError(f"unknown unlearning schedule {mode!r}")


class Stream:
    """Endless seeded shuffles of range(n); batch k is a pure function of k (resumable)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise ValueError("cannot draw batches from an empty set")
        self.n, self.bs, self.seed = n, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, k: int) -> list[int]:
        out = []
        for pos in range(k * self.bs, (k + 1) * self.bs):
            out.append(self._perm(pos // self.n)[pos % self.n])
        return out


def bss_term(features: torch.Tensor, k: int, eta: float) -> torch.Tensor:
    """Batch Spectral Shrinkage (Chen et al. 2019): eta * sum of the k smallest squared singular
    values of the (batch x hidden) feature matrix."""
    s = torch.linalg.svdvals(features.float())  # descending
    return eta * (s[-k:] ** 2).sum()


def pooled_target_features(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Final hidden state mean-pooled over each row's target tokens (the BSS features)."""
    m = (labels != IGNORE).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def _lr_lambda(cfg):
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        frac = min(1.0, step / max(1, cfg.max_steps))
        decay = {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[cfg.lr_schedule]
        return warm * decay

    return f


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
    schedule = build_schedule(cfg.max_steps, cfg.unlearn_every, method.unlearn)
    n_unlearn_sched = schedule.count("unlearn")
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    st = RunState()
    fp = fingerprint(run_id, seed, cfg.model_dump(), method.model_dump(), len(learn_rows), len(unlearn_rows),
                     "fsdp" if fsdp else "replica", mixed_precision)  # fsdp/replica: the two checkpoint formats

    ckpt_path = Path(ckpt_path) if ckpt_path else None
    if ckpt_path and cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") == fp:
            dist.load_full_state(model, opt, ck["model"], ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            st = RunState(**ck["state"])
            _set_rng_state(ck["rng"])
            log.info("stage finetune: resumed %s from event %d/%d", run_id, st.event, len(schedule))
        else:
            log.info("stage finetune: ignoring checkpoint %s (made with other settings)", ckpt_path)

    def save_ckpt():
        from .io import atomic_path

        model_sd, opt_sd = dist.full_state(model, opt)  # a collective under FSDP: every rank calls it
        with atomic_path(ckpt_path) as tmp:
            torch.save({"fingerprint": fp, "model": model_sd, "optimizer": opt_sd,
                        "scheduler": sched.state_dict(), "state": st.__dict__, "rng": _rng_state()}, tmp)

    def step(loss) -> bool:
        """One optimizer step on `loss` with clipping; a non-finite gradient skips it (counted)."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(dist.full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))):
            opt.step()
            return True
        st.skipped_nonfinite += 1
        return False

    bar = tqdm(total=len(schedule), initial=st.event, desc=f"finetune {run_id}", mininterval=5, leave=False)
    while st.event < len(schedule):
        kind = schedule[st.event]
        if kind == "learn":
            idx = learn_stream.batch(st.n_learn)
            st.n_learn += 1
            batch = collate([learn_encs[i] for i in dist.shard(idx)], tok.pad_token_id, device)
            with autocast_context(device, mixed_precision):
                losses, out = forward_loss(fwd, batch, output_hidden_states=method.bss)
            total = losses.sum() * (W / len(idx))
            loss = dist.all_reduce_sum_(losses.detach().sum()) / len(idx)
            if method.bss:
                feats = pooled_target_features(out.hidden_states[-1], batch["labels"])
                total = total + bss_term(feats, cfg.bss_k, cfg.bss_eta)
            step(total)
            lr = sched.get_last_lr()[0]
            sched.step()
            if st.n_learn % cfg.log_every == 0 or st.n_learn == cfg.max_steps:
                st.rows.append({"event": st.event, "step": st.n_learn, "kind": "learn", "loss": loss.item(), "lr": lr})
            if on_learn_step is not None:
                on_learn_step(st.n_learn)
        elif st.unlearn_stopped_at is None:
            idx = unlearn_stream.batch(st.n_unlearn)
            st.n_unlearn += 1
            batch = collate([unlearn_encs[i] for i in dist.shard(idx)], tok.pad_token_id, device)
            with autocast_context(device, mixed_precision):
                losses, _ = forward_loss(fwd, batch)
            nll = losses.sum() * (W / len(idx))
            v = (dist.all_reduce_sum_(losses.detach().sum()) / len(idx)).item()  # one sync: the guard needs it
            lr = sched.get_last_lr()[0]
            if not math.isfinite(v) or v > cfg.unlearn_max_loss:
                st.unlearn_stopped_at = st.n_learn
                log.warning("stage finetune: %s unlearning stopped after learning step %d (NLL on D_U %.3g > bound %g)",
                            run_id, st.n_learn, v, cfg.unlearn_max_loss)
                st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn_stopped", "loss": v, "lr": lr})
            else:
                if step(-cfg.alpha * nll):
                    st.unlearn_taken += 1
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
    stats = {
        "learn_steps": st.n_learn,
        "unlearn_steps_scheduled": n_unlearn_sched,
        "unlearn_steps_taken": st.unlearn_taken,
        "unlearn_stopped_at": st.unlearn_stopped_at,
        "skipped_nonfinite": st.skipped_nonfinite,
        "weights_finite": bool(finite),
        "d_u_size": len(unlearn_rows) if n_unlearn_sched else 0,
    }
    return st.rows, stats

