"""Stage 4: fine-tuning on the learning task with periodic unlearning (one loop for every method).

A method is data (`MethodConfig`): `unlearn` = none | periodic | early, `selection` = which rows
of the confidence table form D_U, `objective` = what an unlearning step minimises on a D_U batch
(`pipeline/objectives.py`: ga, npo, simnpo, wga), `unlearn_optimizer` and its step size, `bss` =
add the Batch Spectral Shrinkage term, `match_steps` = vanilla with as many learning steps as LWF
takes optimizer steps. The loop walks a precomputed *schedule* of events:

    periodic  learn x N_u, unlearn, learn x N_u, unlearn, ...   (unlearn after learning step s
              whenever s % unlearn_every == 0; under `joint`, learning step s itself carries it)
    early     the same number of unlearning steps, all before the first learning step
    none      learning steps only (vanilla, bss)

Learning step: AdamW on mean_b l(x_b, y_b) (+ BSS term), clipped; the LR schedule
(`transformers.get_scheduler`: warmup, then constant / linear / cosine decay to 0 at the last
learning step) advances on learning steps only.

Unlearning step on a D_U batch, objective U = mean_b objective(row b) (for `ga`: -mean_b l(u_b)),
by `unlearn_optimizer` (method.md's optimizer caveat):

    separate  theta <- theta - unlearn_lr * clip(grad U): plain SGD (no momentum, no state shared
              with learning), so the step IS the objective's descent direction and its size is set
              by `unlearn_lr` alone (`alpha` is not used)
    joint     learning step s (s % N_u == 0) optimises mean l(x_b, y_b) + alpha * U in ONE AdamW
              step: alpha weighs the two gradients before Adam's normalisation
    shared    AdamW step on alpha * U with the learning steps' AdamW state: an ablation that
              documents the defect (momentum and Adam's normalisation make it mostly one more
              learning step; alpha hardly matters)

Unlearning steps are not scheduled: every one takes the same step size (separate: `unlearn_lr`;
shared: `lr`), so `early` and `periodic` differ only in when they unlearn. Guard: if the NLL on the
unlearning batch (mean target-token NLL, measured in the step's own forward) is non-finite or above
`unlearn_max_loss`, the step (or, under joint, the unlearning term) is not taken and unlearning
stops for the rest of the run (logged and counted). A step whose gradient norm is non-finite is
skipped.

The pieces, top to bottom: `Finetune` holds one run (its `learning_step` and `unlearning_step`,
and `unlearning_loss`, the one place an objective is called); `Checkpoint` saves and restores it
(every `checkpoint_every` events and on an interrupt between events: model, optimizer, scheduler,
RNG states, the event position and both stream counters, so a killed run resumes to the same final
weights; resumed only when its fingerprint matches every setting of the run plus digests of the
learning rows, the D_U rows and the starting weights); `Callback`s observe it (tests, calibration);
`finetune()` runs it.

From your own script (no DVC):

    from pipeline.config import FinetuneConfig, MethodConfig
    from pipeline.train import finetune
    log, stats = finetune(model, tok, learn_rows, unlearn_rows, FinetuneConfig(max_steps=40),
                          MethodConfig(unlearn="periodic", objective="npo"), seed=0, max_length=64)

`learn_rows` and `unlearn_rows` are dicts with `prompt` and `target` (see docs/objectives.md, "From your own Python
script"); `unlearn_rows` may carry `ref_nll` (the row's mean target-token NLL under the reference
model, e.g. the confidence table's `nll_base`), otherwise objectives that need a reference compute
it with one forward pass of the starting model.
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
from .data import IGNORE, Stream, collate, encode_rows, forward_loss, forward_token_nll
from .objectives import OBJECTIVES

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
    with `match_steps` (vanilla_matched: its own `unlearn_every` and `unlearn_optimizer` say which
    unlearning run it matches) when unlearning takes optimizer steps of its own."""
    extra = cfg.max_steps // method.unlearn_every if method.match_steps and method.unlearn_optimizer != "joint" else 0
    return cfg.max_steps + extra


def ascent_direction(model, tok, rows: list[dict], max_length: int, add_bos: bool = True):
    """(mean l over `rows`, its gradient flattened over all parameters): the direction a GA
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


def autocast_context(device: torch.device, mixed_precision: str = "no"):
    """bf16 autocast for params `launch.mixed_precision: bf16` (the weights, gradients and AdamW
    state keep `model.dtype`: float32 weights + bf16 compute is classic mixed precision)."""
    import contextlib

    if mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def n_target_tokens(enc) -> int:
    """Target tokens of one encoded row that the loss counts (labels shifted by one, as `token_nll`)."""
    return sum(lab != IGNORE for lab in enc.labels[1:])


@torch.no_grad()
def reference_nll_sums(model, encs: list, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """S_ref per row: the summed target-token NLL under `model` (float64, CPU), no gradients."""
    from .data import sequence_nlls

    was_training = model.training
    mean = sequence_nlls(model, encs, pad_id, batch_size).cpu()
    model.train(was_training)
    return mean * torch.tensor([n_target_tokens(e) for e in encs], dtype=torch.float64)


# --- one run -------------------------------------------------------------------------------------

@dataclass
class RunState:
    event: int = 0
    n_learn: int = 0
    n_unlearn: int = 0
    unlearn_taken: int = 0
    unlearn_stopped_at: int | None = None
    skipped_nonfinite: int = 0
    rows: list = field(default_factory=list)


class Finetune:
    """One fine-tuning run of one method: its data, model, optimizers, schedule and state."""

    def __init__(self, model, tok, learn_rows: list[dict], unlearn_rows: list[dict], cfg, method, seed: int,
                 max_length: int, add_bos: bool = True, mixed_precision: str = "no", run_id: str = ""):
        W = dist.world_size() if dist.active() else 1
        if W > 1 and method.bss:
            raise ValueError("the bss method runs in one process only (its SVD needs the whole batch)")
        if W > 1 and min(cfg.batch_size, method.unlearn_batch_size) < W:
            raise ValueError(f"finetune.batch_size and unlearn_batch_size must be >= the {W} processes")
        self.model, self.tok, self.cfg, self.method, self.seed = model, tok, cfg, method, seed
        self.W, self.run_id, self.mixed_precision = W, run_id, mixed_precision
        self.mode = method.unlearn_optimizer
        self.objective = OBJECTIVES[method.objective]
        self.n_steps = learning_steps(cfg, method)
        self.schedule = build_schedule(self.n_steps, method.unlearn_every, method.unlearn, joint=self.mode == "joint")
        self.n_unlearn_sched = sum(e != "learn" for e in self.schedule)
        if self.n_unlearn_sched and not unlearn_rows:
            raise ValueError("this method unlearns but its selected set D_U is empty")
        self.learn_rows = learn_rows
        self.unlearn_rows = unlearn_rows if self.n_unlearn_sched else []
        self.learn_encs = encode_rows(tok, learn_rows, max_length, add_bos)
        self.unlearn_encs = encode_rows(tok, self.unlearn_rows, max_length, add_bos)
        self.learn_stream = Stream(len(self.learn_encs), cfg.batch_size, seed)
        self.unlearn_stream = Stream(len(self.unlearn_encs), method.unlearn_batch_size, seed + 1) if self.unlearn_encs else None
        self.device = next(model.parameters()).device
        self.ref = self._reference() if self.objective.needs_ref and self.unlearn_encs else None

        torch.manual_seed(seed)
        model.train()
        # several processes: each takes a strided shard of every batch; DDP averages the gradients, and
        # every loss is scaled so that the average equals the single-process batch mean
        # (fsdp: the same, with gradients reduce-scattered to the process that holds each shard)
        self.fsdp = dist.is_fsdp(model)
        self.fwd = model
        if W > 1 and not self.fsdp:
            self.fwd = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = dist.adamw(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # the separate ascent optimizer is stateless (plain SGD, no momentum)
        self.ascent = torch.optim.SGD(self.params, lr=method.unlearn_lr) if self.mode == "separate" else None
        self.sched = lr_scheduler(self.opt, cfg, self.n_steps)
        self.st = RunState()

    def _reference(self) -> torch.Tensor:
        """S_ref of every D_U row: from the rows' `ref_nll` (mean token NLL under the reference, the
        confidence table's `nll_base`) when they all carry it, else one forward of the starting model."""
        if all("ref_nll" in r for r in self.unlearn_rows):
            n = torch.tensor([n_target_tokens(e) for e in self.unlearn_encs], dtype=torch.float64)
            return torch.tensor([float(r["ref_nll"]) for r in self.unlearn_rows], dtype=torch.float64) * n
        if dist.is_fsdp(self.model):  # a forward before the optimizer exists would leave FSDP2's root unsharded
            raise ValueError("under FSDP the D_U rows must carry ref_nll (the confidence table's nll_base), as the "
                             "finetune stage passes them")
        log.info("stage finetune: %s: reference NLL of %d D_U rows from the starting model", self.run_id,
                 len(self.unlearn_encs))
        return reference_nll_sums(self.model, self.unlearn_encs, self.tok.pad_token_id)

    # -- the pieces of a step ---------------------------------------------------------------------

    def forward(self, encs: list, idx: list[int], bss: bool = False):
        """(per-token NLL, mask, model output, batch) of this process's shard of batch `idx`."""
        batch = collate([encs[i] for i in idx], self.tok.pad_token_id, self.device)
        with autocast_context(self.device, self.mixed_precision):
            nll, mask, out = forward_token_nll(self.fwd, batch, output_hidden_states=bss)
        return nll, mask, out, batch

    def unlearning_loss(self, nll: torch.Tensor, mask: torch.Tensor, shard_idx: list[int], n_batch: int):
        """The unlearning objective of a D_U batch (its rows `shard_idx` on this process), scaled so
        that the sum over processes is the batch mean. The only call of an objective."""
        ref = self.ref[shard_idx].to(self.device, nll.dtype) if self.ref is not None else None
        per_row = self.objective(nll, mask, ref, **self.method.objective_args)
        return per_row.sum() * (self.W / n_batch)

    def batch_mean_nll(self, nll: torch.Tensor, mask: torch.Tensor, n_batch: int) -> float:
        """Mean over the whole batch (all processes) of each row's mean target-token NLL."""
        rows = (nll.detach().sum(1) / mask.sum(1).clamp_min(1)).sum()
        return (dist.all_reduce_sum_(rows) / n_batch).item()

    def step(self, loss, optimizer) -> bool:
        """One optimizer step on `loss` with clipping; a non-finite gradient skips it (counted)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(dist.full_tensor(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))):
            optimizer.step()
            return True
        self.st.skipped_nonfinite += 1
        return False

    def guard(self, v: float, lr: float) -> bool:
        """False (and unlearning stops for good) when the D_U batch NLL is non-finite or too high."""
        st, bound = self.st, self.method.unlearn_max_loss
        if math.isfinite(v) and v <= bound:
            return True
        st.unlearn_stopped_at = st.n_learn
        log.warning("stage finetune: %s unlearning stopped after learning step %d (NLL on D_U %.3g > bound %g)",
                    self.run_id, st.n_learn, v, bound)
        st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn_stopped", "loss": v, "lr": lr})
        return False

    # -- the two kinds of step --------------------------------------------------------------------

    def learning_step(self, joint: bool) -> None:
        """AdamW on the next learning batch (+ BSS); with `joint`, + alpha * the unlearning objective of
        the next D_U batch in the same step (one forward over both, split after)."""
        st, cfg, method = self.st, self.cfg, self.method
        idx = self.learn_stream.batch(st.n_learn)
        st.n_learn += 1
        lr = self.sched.get_last_lr()[0]
        lsh = dist.shard(idx)
        unlearn_term = False
        if joint and st.unlearn_stopped_at is None:
            uidx = self.unlearn_stream.batch(st.n_unlearn)
            st.n_unlearn += 1
            ush = dist.shard(uidx)
            encs = self.learn_encs + self.unlearn_encs
            nll_all, mask_all, out, batch = self.forward(encs, lsh + [len(self.learn_encs) + i for i in ush], method.bss)
            nll, mask, unll, umask = nll_all[:len(lsh)], mask_all[:len(lsh)], nll_all[len(lsh):], mask_all[len(lsh):]
            hidden, labels = ((out.hidden_states[-1][:len(lsh)], batch["labels"][:len(lsh)])
                              if method.bss else (None, None))
            v = self.batch_mean_nll(unll, umask, len(uidx))
            unlearn_term = self.guard(v, lr)
        else:
            nll, mask, out, batch = self.forward(self.learn_encs, lsh, method.bss)
            hidden, labels = (out.hidden_states[-1], batch["labels"]) if method.bss else (None, None)
        losses = nll.sum(1) / mask.sum(1).clamp_min(1)
        total = losses.sum() * (self.W / len(idx))
        loss = dist.all_reduce_sum_(losses.detach().sum()) / len(idx)
        if method.bss:
            total = total + bss_term(pooled_target_features(hidden, labels), cfg.bss_k, cfg.bss_eta)
        if unlearn_term:
            total = total + method.alpha * self.unlearning_loss(unll, umask, ush, len(uidx))
        taken = self.step(total, self.opt)
        self.sched.step()
        if st.n_learn % cfg.log_every == 0 or st.n_learn == self.n_steps:
            st.rows.append({"event": st.event, "step": st.n_learn, "kind": "learn", "loss": loss.item(), "lr": lr})
        if unlearn_term:
            st.unlearn_taken += int(taken)
            st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn", "loss": v, "lr": lr})

    def unlearning_step(self) -> None:
        """One step of its own on the objective of the next D_U batch (separate: SGD; shared: the
        learning AdamW state at the unscheduled learning LR, scaled by alpha)."""
        st, method = self.st, self.method
        if st.unlearn_stopped_at is not None:
            return
        idx = self.unlearn_stream.batch(st.n_unlearn)
        st.n_unlearn += 1
        ush = dist.shard(idx)
        nll, mask, _, _ = self.forward(self.unlearn_encs, ush)
        v = self.batch_mean_nll(nll, mask, len(idx))  # one sync: the guard needs it
        lr = method.unlearn_lr if self.mode == "separate" else self.cfg.lr
        if not self.guard(v, lr):
            return
        loss = self.unlearning_loss(nll, mask, ush, len(idx))
        if self.mode == "separate":
            taken = self.step(loss, self.ascent)
        else:  # shared
            scheduled = [g["lr"] for g in self.opt.param_groups]
            for g in self.opt.param_groups:
                g["lr"] = self.cfg.lr
            taken = self.step(method.alpha * loss, self.opt)
            for g, old in zip(self.opt.param_groups, scheduled):
                g["lr"] = old
        st.unlearn_taken += int(taken)
        st.rows.append({"event": st.event, "step": st.n_learn, "kind": "unlearn", "loss": v, "lr": lr})

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, checkpoint: "Checkpoint | None" = None, callbacks=()) -> tuple[list, dict]:
        """Walk the schedule from where `checkpoint` left it. An interrupt (KeyboardInterrupt) between
        two events saves the checkpoint first. Returns (log rows, stats)."""
        if checkpoint is not None:
            checkpoint.restore(self)
        st = self.st
        bar = tqdm(total=len(self.schedule), initial=st.event, desc=f"finetune {self.run_id}", mininterval=5,
                   leave=False)
        between_events = True
        try:
            while st.event < len(self.schedule):
                kind = self.schedule[st.event]
                between_events = False
                if kind == "unlearn":
                    self.unlearning_step()
                else:
                    self.learning_step(joint=kind == "joint")
                st.event += 1
                between_events = True
                bar.update(1)
                if checkpoint is not None and st.event % self.cfg.checkpoint_every == 0 and st.event < len(self.schedule):
                    checkpoint.save(self)
                for cb in callbacks:
                    if kind != "unlearn":
                        cb.on_learn_step(self, st.n_learn)
                    cb.on_event_end(self)
        except KeyboardInterrupt:
            if checkpoint is not None and between_events:
                checkpoint.save(self)
            raise
        finally:
            bar.close()
        self.model.eval()
        dist.barrier()  # every rank is done with the checkpoint before rank 0 removes it
        if checkpoint is not None:
            checkpoint.remove()
        return st.rows, self.stats()

    def stats(self) -> dict:
        st, m = self.st, self.method
        finite = all(torch.isfinite(dist.full_tensor(p)).all() for p in self.model.parameters())
        separate_steps = st.unlearn_taken if self.mode != "joint" else 0
        return {
            "learn_steps": st.n_learn,
            "optimizer_steps": st.n_learn + separate_steps,  # attempted: learning steps + ascent steps of their own
            "unlearn_optimizer": self.mode,
            "objective": m.objective,
            "objective_args": {**self.objective.defaults, **m.objective_args},
            "unlearn_steps_scheduled": self.n_unlearn_sched,
            "unlearn_steps_taken": st.unlearn_taken,
            "unlearn_stopped_at": st.unlearn_stopped_at,
            "skipped_nonfinite": st.skipped_nonfinite,
            "weights_finite": bool(finite),
            "d_u_size": len(self.unlearn_rows),
        }


# --- checkpoints ---------------------------------------------------------------------------------

def _rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


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


class Checkpoint:
    """The resumable state of one run in one file, valid only for the run with the same fingerprint:
    every setting, the content of the learning rows and D_U, the starting weights (their bytes), the
    checkpoint format (fsdp shards or a replica) and the mixed precision."""

    def __init__(self, path: str | Path, run: Finetune, resume: bool = True):
        self.path, self.resume = Path(path), resume
        self.fingerprint = fingerprint(run.run_id, run.seed, run.cfg.model_dump(), run.method.model_dump(),
                                       rows_digest(run.learn_rows), rows_digest(run.unlearn_rows),
                                       weights_digest(run.model), "fsdp" if run.fsdp else "replica",
                                       run.mixed_precision)

    def restore(self, run: Finetune) -> bool:
        if not (self.resume and self.path.exists()):
            return False
        ck = torch.load(self.path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") != self.fingerprint:
            log.info("stage finetune: ignoring checkpoint %s (made with other settings, data or base model)", self.path)
            return False
        dist.load_full_state(run.model, run.opt, ck["model"], ck["optimizer"])
        run.sched.load_state_dict(ck["scheduler"])
        run.st = RunState(**ck["state"])
        _set_rng_state(ck["rng"])
        log.info("stage finetune: resumed %s from event %d/%d", run.run_id, run.st.event, len(run.schedule))
        return True

    def save(self, run: Finetune) -> None:
        from .io import atomic_path

        model_sd, opt_sd = dist.full_state(run.model, run.opt)  # a collective under FSDP: every rank calls it
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "model": model_sd, "optimizer": opt_sd,
                        "scheduler": run.sched.state_dict(), "state": run.st.__dict__, "rng": _rng_state()}, tmp)

    def remove(self) -> None:
        if dist.is_main():
            self.path.unlink(missing_ok=True)


# --- callbacks -----------------------------------------------------------------------------------

class Callback:
    """Observes a run; the loop calls `on_learn_step` after every learning step and `on_event_end`
    after every event (and after the checkpoint that event may write)."""

    def on_learn_step(self, run: Finetune, step: int) -> None:
        pass

    def on_event_end(self, run: Finetune) -> None:
        pass


class StopAfter(Callback):
    """Interrupts the run (KeyboardInterrupt, as Ctrl-C would) after `n` events: the resume tests'
    simulated crash. The loop saves the checkpoint before the interrupt leaves it."""

    def __init__(self, n: int):
        self.n = n

    def on_event_end(self, run: Finetune) -> None:
        if run.st.event >= self.n:
            raise KeyboardInterrupt(f"simulated crash after {run.st.event} events")


class OnLearnStep(Callback):
    """Calls `fn(model, step)` after every learning step (learning curves, calibration)."""

    def __init__(self, fn):
        self.fn = fn

    def on_learn_step(self, run: Finetune, step: int) -> None:
        self.fn(run.model, step)


def finetune(model, tok, learn_rows: list[dict], unlearn_rows: list[dict], cfg, method, seed: int,
             max_length: int, add_bos: bool = True, ckpt_path: str | Path | None = None, run_id: str = "",
             callbacks=(), mixed_precision: str = "no"):
    """Fine-tune `model` in place with `method` (a `MethodConfig`) on the learning rows, unlearning
    `unlearn_rows` (D_U) on its schedule. `cfg`: a `FinetuneConfig` (the learning recipe). With several
    processes a model sharded by `dist.fsdp_wrap` trains under FSDP (gather the trained weights with
    `dist.full_state`), any other is wrapped in DistributedDataParallel. `mixed_precision` 'bf16':
    bf16 autocast. `ckpt_path`: checkpoint file (resumed when it matches). Returns (log rows, stats)."""
    run = Finetune(model, tok, learn_rows, unlearn_rows, cfg, method, seed, max_length, add_bos, mixed_precision,
                   run_id)
    checkpoint = Checkpoint(ckpt_path, run, cfg.resume) if ckpt_path else None
    return run.run(checkpoint, callbacks)
