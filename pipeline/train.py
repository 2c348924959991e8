"""Stage 4: fine-tuning on the learning task with periodic unlearning (one loop for every method).

A method is data (`MethodConfig`): `unlearn` = none | periodic | early (the *schedule*),
`selection` = which rows of the confidence table form D_U, `objective` = what an unlearning step
minimises on a D_U batch (`pipeline/objectives.py`), `unlearn_optimizer` = how the unlearning step
is taken, `guard` = when unlearning stops (`pipeline/guard.py`), `bss` = add the Batch Spectral
Shrinkage term, `match_steps` = vanilla with as many learning steps as LWF takes optimizer steps,
`negate_steps` = forget-then-learn: task negation on D_U before the first learning step (pipeline/negation.py).
The loop walks a precomputed list of events:

    periodic  learn x N_u, unlearn, learn x N_u, unlearn, ...   (unlearn after learning step s
              whenever s % unlearn_every == 0; under `joint`, learning step s itself carries it)
    early     the same number of unlearning steps, all before the first learning step
    none      learning steps only (vanilla, bss)

Learning step: AdamW on mean_b l(x_b, y_b) (+ BSS term), clipped (`pipeline.step.optimizer_step`,
the step theta*_L and the lab's pretraining take too); the LR schedule advances on learning steps.

Unlearning step on a D_U batch, U = mean_b objective(row b) (for `ga`: -mean_b l(u_b)), taken by
`unlearn_optimizer` (method.md's optimizer caveat):

    separate  theta <- theta - unlearn_lr * clip(grad U): plain SGD, no state shared with learning
    adam      AdamW at `unlearn_lr` with its own state (no weight decay): Adam's normalisation moves
              firmly held knowledge, whose gradients are small, as far as weakly held knowledge
    joint     learning step s (s % N_u == 0) optimises mean l(x_b, y_b) + alpha * U in ONE AdamW
              step: alpha weighs the two gradients before Adam's normalisation
    shared    AdamW step on alpha * U with the learning steps' AdamW state at the unscheduled `lr`:
              an ablation that documents the defect (mostly one more learning step)

Override points (subclass `Finetune`): `learning_loss`, `unlearning_loss`, and `Callback`s
(pipeline/callbacks.py) after every learning step and every event. The schedule: pipeline/schedule.py. `Checkpoint` (pipeline/checkpoint.py) resumes a killed run to
the same final weights.

From your own script (no DVC):

    from pipeline.config import FinetuneConfig, MethodConfig
    from pipeline.train import finetune
    log, stats = finetune(model, tok, learn_rows, unlearn_rows, FinetuneConfig(max_steps=40),
                          MethodConfig(unlearn="periodic", objective="npo"), seed=0, max_length=64)

`learn_rows` and `unlearn_rows` are dicts with `prompt` and `target` (docs/objectives.md);
`unlearn_rows` may carry `ref_nll` (the row's mean target-token NLL under the reference model, e.g.
the confidence table's `nll_base`), otherwise objectives that need it take one forward pass.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import dist
from .checkpoint import Checkpoint
from .bss import bss_term, pooled_target_features
from .data import Stream, collate, encode_rows, forward_token_nll, given_reference_sums, reference_nll_sums
from .guard import Guard
from .objectives import OBJECTIVES
from .schedule import build_schedule, learning_steps
from .step import autocast_context, lr_scheduler, optimizer_step, row_losses

log = logging.getLogger("lwf")


@dataclass
class RunState:
    """Where a run stands (all a checkpoint needs besides weights, optimizers and RNG)."""
    event: int = 0
    learn_steps: int = 0
    unlearn_batches: int = 0  # D_U batches drawn (a stopped run draws no more)
    unlearn_taken: int = 0
    skipped_nonfinite: int = 0
    log: list = field(default_factory=list)
    negation: dict | None = None  # forget-then-learn's record, once it ran (pipeline/negation.py)


class Finetune:
    """One fine-tuning run of one method: its data, model, optimizers, schedule and state."""

    def __init__(self, model, tok, learn_rows: list[dict], unlearn_rows: list[dict], cfg, method, seed: int,
                 max_length: int, add_bos: bool = True, mixed_precision: str = "no", run_id: str = "",
                 guard_rows: list[dict] | None = None):
        self.world = dist.world_size() if dist.active() else 1
        if self.world > 1 and method.bss:
            raise ValueError("the bss method runs in one process only (its SVD needs the whole batch)")
        if self.world > 1 and min(cfg.batch_size, method.unlearn_batch_size) < self.world:
            raise ValueError(f"finetune.batch_size and unlearn_batch_size must be >= the {self.world} processes")
        self.model, self.tok, self.cfg, self.method, self.seed = model, tok, cfg, method, seed
        self.run_id, self.mixed_precision = run_id, mixed_precision
        self.objective = OBJECTIVES[method.objective]
        self.n_steps = learning_steps(cfg, method)
        self.schedule = build_schedule(self.n_steps, method.unlearn_every, method.unlearn,
                                       joint=method.unlearn_optimizer == "joint")
        self.n_unlearn_scheduled = sum(e != "learn" for e in self.schedule)
        if (self.n_unlearn_scheduled or method.negate_steps) and not unlearn_rows:
            raise ValueError("this method unlearns but its selected set D_U is empty")
        self.learn_rows = learn_rows
        self.unlearn_rows = unlearn_rows if self.n_unlearn_scheduled or method.negate_steps else []
        self.learn_encs = encode_rows(tok, learn_rows, max_length, add_bos)
        self.unlearn_encs = encode_rows(tok, self.unlearn_rows, max_length, add_bos)
        self.learn_batches = Stream(len(self.learn_encs), cfg.batch_size, seed)
        self.unlearn_batches = Stream(len(self.unlearn_encs), method.unlearn_batch_size, seed + 1) \
            if self.unlearn_encs else None
        guard_rows = (guard_rows or learn_rows[:method.guard_rows]) if self.n_unlearn_scheduled else []
        self.guard = Guard(method, encode_rows(tok, guard_rows, max_length, add_bos), guard_rows,
                           tok.pad_token_id, run_id)
        self.device = next(model.parameters()).device
        self.ref = self._reference() if self.objective.needs_ref and self.n_unlearn_scheduled else None

        torch.manual_seed(seed)
        model.train()
        # several processes: each takes a strided shard of every batch; DDP averages the gradients, and
        # every loss is scaled so that the average equals the single-process batch mean
        # (fsdp: the same, with gradients reduce-scattered to the process that holds each shard)
        self.fsdp = dist.is_fsdp(model)
        self.forward_model = model
        if self.world > 1 and not self.fsdp:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = dist.adamw(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.unlearn_optimizer = {  # the unlearning step's own optimizer (joint and shared use the learning one)
            "separate": lambda: torch.optim.SGD(self.params, lr=method.unlearn_lr),
            "adam": lambda: dist.adamw(self.params, lr=method.unlearn_lr, weight_decay=0.0),
        }.get(method.unlearn_optimizer, lambda: None)()
        self.scheduler = lr_scheduler(self.optimizer, cfg.lr_schedule, cfg.warmup_steps, self.n_steps)
        self.state = RunState()

    def _reference(self) -> torch.Tensor:
        """S_ref of every D_U row: from the rows' `ref_nll` when they all carry it, else one forward
        of the starting model."""
        given = given_reference_sums(self.unlearn_rows, self.unlearn_encs)
        if given is not None:
            return given
        if dist.is_fsdp(self.model):  # a forward before the optimizer exists would leave FSDP2's root unsharded
            raise ValueError("under FSDP the D_U rows must carry ref_nll (the confidence table's nll_base), as the "
                             "finetune stage passes them")
        log.info("stage finetune: %s: reference NLL of %d D_U rows from the starting model", self.run_id,
                 len(self.unlearn_encs))
        return reference_nll_sums(self.model, self.unlearn_encs, self.tok.pad_token_id)

    # -- the losses (override points) -------------------------------------------------------------

    def forward(self, encs: list, idx: list[int], hidden: bool = False):
        """(per-token NLL, mask, model output, batch) of this process's shard `idx` of `encs`."""
        batch = collate([encs[i] for i in idx], self.tok.pad_token_id, self.device)
        with autocast_context(self.device, self.mixed_precision):
            nll, mask, out = forward_token_nll(self.forward_model, batch, output_hidden_states=hidden)
        return nll, mask, out, batch

    def learning_loss(self, nll, mask, hidden, labels, n_batch: int) -> torch.Tensor:
        """mean_b l(x_b, y_b) over the whole batch (this process's share of it), + the BSS term on
        the final hidden states `hidden` (None without BSS)."""
        loss = row_losses(nll, mask).sum() * (self.world / n_batch)
        if self.method.bss:
            loss = loss + bss_term(pooled_target_features(hidden, labels), self.cfg.bss_k, self.cfg.bss_eta)
        return loss

    def unlearning_loss(self, nll, mask, shard_idx: list[int], n_batch: int) -> torch.Tensor:
        """The unlearning objective of a D_U batch (rows `shard_idx` on this process), scaled so that
        the sum over processes is the batch mean. The only call of an objective."""
        ref = self.ref[shard_idx].to(self.device, nll.dtype) if self.ref is not None else None
        return self.objective(nll, mask, ref, **self.method.objective_args).sum() * (self.world / n_batch)

    def batch_mean(self, nll, mask, n_batch: int) -> float:
        """Mean over the whole batch (all processes) of each row's mean target-token NLL."""
        return (dist.all_reduce_sum_(row_losses(nll.detach(), mask).sum()) / n_batch).item()

    def take_step(self, loss, optimizer) -> bool:
        taken = optimizer_step(loss, self.params, optimizer, self.cfg.grad_clip)
        self.state.skipped_nonfinite += int(not taken)
        return taken

    def unlearning(self) -> bool:
        return self.guard.stopped_at is None

    def next_unlearn_batch(self) -> list[int]:
        idx = self.unlearn_batches.batch(self.state.unlearn_batches)
        self.state.unlearn_batches += 1
        return idx

    def record(self, kind: str, loss: float, lr: float) -> None:
        self.state.log.append({"event": self.state.event, "step": self.state.learn_steps, "kind": kind,
                               "loss": loss, "lr": lr})

    # -- the two kinds of step --------------------------------------------------------------------

    def learning_step(self, joint: bool) -> None:
        """AdamW on the next learning batch; with `joint`, + alpha * the unlearning objective of the
        next D_U batch in the same step (one forward over both batches, split after)."""
        state = self.state
        idx = self.learn_batches.batch(state.learn_steps)
        state.learn_steps += 1
        lr = self.scheduler.get_last_lr()[0]
        mine = dist.shard(idx)
        bss = self.method.bss
        with_unlearning = joint and self.unlearning()
        before = None
        if with_unlearning:
            if self.guard.watching():
                before = self.guard.nll(self.model, self.device)
            unlearn_idx = self.next_unlearn_batch()
            unlearn_mine = dist.shard(unlearn_idx)
            rows = mine + [len(self.learn_encs) + i for i in unlearn_mine]
            nll, mask, out, batch = self.forward(self.learn_encs + self.unlearn_encs, rows, bss)
            k = len(mine)
            hidden, labels = (out.hidden_states[-1][:k], batch["labels"][:k]) if bss else (None, None)
            d_u_nll = self.batch_mean(nll[k:], mask[k:], len(unlearn_idx))
            with_unlearning = self.guard.allows(state.learn_steps, d_u_nll)
            if not with_unlearning:
                self.record("unlearn_stopped", d_u_nll, lr)
            loss = self.learning_loss(nll[:k], mask[:k], hidden, labels, len(idx))
            if with_unlearning:
                loss = loss + self.method.alpha * self.unlearning_loss(nll[k:], mask[k:], unlearn_mine, len(unlearn_idx))
            nll, mask = nll[:k], mask[:k]
        else:
            nll, mask, out, batch = self.forward(self.learn_encs, mine, bss)
            hidden, labels = (out.hidden_states[-1], batch["labels"]) if bss else (None, None)
            loss = self.learning_loss(nll, mask, hidden, labels, len(idx))
        learn_nll = self.batch_mean(nll, mask, len(idx))
        taken = self.take_step(loss, self.optimizer)
        self.scheduler.step()
        if state.learn_steps % self.cfg.log_every == 0 or state.learn_steps == self.n_steps:
            self.record("learn", learn_nll, lr)
        if with_unlearning:
            state.unlearn_taken += int(taken)
            self.record("unlearn", d_u_nll, lr)
            if before is not None:
                after = self.guard.nll(self.model, self.device)
                if not self.guard.accepts(state.learn_steps, before, after):
                    self.record("unlearn_stopped", after, lr)

    def unlearning_step(self) -> None:
        """One step of its own on the objective of the next D_U batch (separate / adam: the unlearning
        optimizer at unlearn_lr; shared: the learning AdamW at the unscheduled `lr`, on alpha * U)."""
        if not self.unlearning():
            return
        state, method = self.state, self.method
        before = self.guard.nll(self.model, self.device) if self.guard.watching() else None
        idx = self.next_unlearn_batch()
        mine = dist.shard(idx)
        nll, mask, _, _ = self.forward(self.unlearn_encs, mine)
        d_u_nll = self.batch_mean(nll, mask, len(idx))
        shared = method.unlearn_optimizer == "shared"
        lr = self.cfg.lr if shared else method.unlearn_lr
        if not self.guard.allows(state.learn_steps, d_u_nll):
            return self.record("unlearn_stopped", d_u_nll, lr)
        if before is not None:
            saved = [p.detach().clone() for p in self.params]
        loss = self.unlearning_loss(nll, mask, mine, len(idx))
        if shared:
            scheduled = [g["lr"] for g in self.optimizer.param_groups]
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.lr
            taken = self.take_step(method.alpha * loss, self.optimizer)
            for g, old in zip(self.optimizer.param_groups, scheduled):
                g["lr"] = old
        else:
            taken = self.take_step(loss, self.unlearn_optimizer)
        state.unlearn_taken += int(taken)
        self.record("unlearn", d_u_nll, lr)
        if before is not None:
            after = self.guard.nll(self.model, self.device)
            if not self.guard.accepts(state.learn_steps, before, after):
                with torch.no_grad():  # undo the step that did the damage
                    for p, old in zip(self.params, saved):
                        p.copy_(old)
                state.unlearn_taken -= int(taken)
                self.record("unlearn_stopped", after, lr)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, checkpoint: Checkpoint | None = None, callbacks=()) -> tuple[list, dict]:
        """Walk the schedule from where `checkpoint` left it. An interrupt (KeyboardInterrupt) between
        two events saves the checkpoint first. Returns (log rows, stats)."""
        if checkpoint is not None:
            checkpoint.restore(self)
        state = self.state
        if self.method.negate_steps and state.negation is None:  # forget-then-learn: forget first, once
            from .negation import negate

            state.negation = negate(self)
        bar = tqdm(total=len(self.schedule), initial=state.event, desc=f"finetune {self.run_id}", mininterval=5,
                   leave=False)
        between_events = True
        try:
            while state.event < len(self.schedule):
                kind = self.schedule[state.event]
                between_events = False
                self.unlearning_step() if kind == "unlearn" else self.learning_step(joint=kind == "joint")
                state.event += 1
                between_events = True
                bar.update(1)
                if checkpoint is not None and state.event % self.cfg.checkpoint_every == 0 \
                        and state.event < len(self.schedule):
                    checkpoint.save(self)
                for callback in callbacks:
                    if kind != "unlearn":
                        callback.on_learn_step(self, state.learn_steps)
                    callback.on_event_end(self)
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
        return state.log, self.stats()

    def stats(self) -> dict:
        state, method = self.state, self.method
        finite = all(torch.isfinite(dist.full_tensor(p)).all() for p in self.model.parameters())
        own_steps = state.unlearn_taken if method.unlearn_optimizer != "joint" else 0
        return {
            "learn_steps": state.learn_steps,
            "optimizer_steps": state.learn_steps + own_steps,  # learning steps + unlearning steps of their own
            "unlearn_optimizer": method.unlearn_optimizer,
            "objective": method.objective,
            "objective_args": {**self.objective.defaults, **method.objective_args},
            "unlearn_steps_scheduled": self.n_unlearn_scheduled,
            "unlearn_steps_taken": state.unlearn_taken,
            "unlearn_stopped_at": self.guard.stopped_at,
            "guard": self.guard.stats(),
            "skipped_nonfinite": state.skipped_nonfinite,
            "weights_finite": bool(finite),
            "d_u_size": len(self.unlearn_rows),
            **({"negation": state.negation} if state.negation else {}),
        }


def finetune(model, tok, learn_rows: list[dict], unlearn_rows: list[dict], cfg, method, seed: int,
             max_length: int, add_bos: bool = True, ckpt_path: str | Path | None = None, run_id: str = "",
             callbacks=(), mixed_precision: str = "no", guard_rows: list[dict] | None = None):
    """Fine-tune `model` in place with `method` (a `MethodConfig`) on the learning rows, unlearning
    `unlearn_rows` (D_U) on its schedule. `cfg`: a `FinetuneConfig` (the learning recipe).
    `guard_rows`: the rows the graceful guard watches (default: the first `method.guard_rows`
    learning rows). With several processes a model sharded by `dist.fsdp_wrap` trains under FSDP,
    any other under DistributedDataParallel. `mixed_precision` 'bf16': bf16 autocast. `ckpt_path`:
    checkpoint file (resumed when it matches). Returns (log rows, stats)."""
    run = Finetune(model, tok, learn_rows, unlearn_rows, cfg, method, seed, max_length, add_bos, mixed_precision,
                   run_id, guard_rows)
    checkpoint = Checkpoint(ckpt_path, run, cfg.resume) if ckpt_path else None
    return run.run(checkpoint, callbacks)
