"""LWF inside Hugging Face `Trainer` (and TRL's trainers, which subclass it): `LWFTrainer` takes an
unlearning set D_U and a method's unlearning settings (a `MethodConfig`: objective, N_u, step
size, optimizer, guard) and interleaves one unlearning step after every N_u optimizer steps of the
user's own `trainer.train()`.

    from pipeline.config import MethodConfig
    from pipeline.hf_trainer import LWFTrainer
    trainer = LWFTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                         data_collator=collator, unlearn_rows=d_u,
                         method=MethodConfig(unlearn="periodic", objective="npo", unlearn_lr=0.03),
                         unlearn_tokenizer=tok, max_length=256)
    trainer.train()

The learning side is the Trainer's, unchanged (its loss, optimizer, scheduler, gradient
accumulation, mixed precision, logging, checkpoints). The unlearning step is the pipeline's: the
same objective registry (`pipeline.objectives`), the same optimizer step (`pipeline.step`), the
same guard (`pipeline.guard`), D_U batches from the same seeded stream. It runs right after the
Trainer's optimizer step (`on_step_end`: gradients already zeroed) when `global_step % N_u == 0`,
backpropagates through the Trainer's `accelerator` (so under DDP every process takes its shard of
the D_U batch and the gradients are averaged), and steps its own optimizer (`separate`: SGD,
`adam`: AdamW with its own state). Its state (stream position, optimizer, guard record) is saved
in every Trainer checkpoint (`lwf_state.pt`) and restored by `train(resume_from_checkpoint=...)`.

Differences from the pipeline's loop (docs/trainer.md): `unlearn_optimizer` joint / shared and
`unlearn: early` are not offered (they change the Trainer's own optimizer step); DeepSpeed and
FSDP are refused (a second optimizer over sharded parameters); the learning loss, batch order and
LR schedule are the Trainer's, so a Trainer run and a pipeline run do not give the same weights.
"""
from __future__ import annotations

import logging
import os

import torch
from transformers import Trainer, TrainerCallback

from .data import Stream, collate, encode_rows, forward_token_nll, given_reference_sums, reference_nll_sums
from .guard import Guard
from .objectives import OBJECTIVES
from .step import clipped_update

log = logging.getLogger("lwf")
STATE_FILE = "lwf_state.pt"


class _AfterOptimizerStep(TrainerCallback):
    def __init__(self, trainer: "LWFTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.maybe_unlearn(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            torch.save(self.trainer.lwf_state(), os.path.join(folder, STATE_FILE))


class LWFTrainer(Trainer):
    def __init__(self, *args, unlearn_rows: list[dict], method, unlearn_tokenizer, max_length: int,
                 add_bos: bool = True, guard_rows: list[dict] | None = None, seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if method.unlearn != "periodic":
            raise ValueError("LWFTrainer runs the periodic schedule: set unlearn: periodic")
        if method.unlearn_optimizer not in ("separate", "adam"):
            raise ValueError(f"unlearn_optimizer {method.unlearn_optimizer!r} changes the Trainer's own optimizer "
                             "step; LWFTrainer offers separate and adam")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("LWFTrainer's unlearning step needs plain (or DDP-replicated) parameters: "
                             "DeepSpeed and FSDP are not supported")
        if not unlearn_rows:
            raise ValueError("unlearn_rows (D_U) is empty")
        self.method, self.tok, self.unlearn_rows = method, unlearn_tokenizer, unlearn_rows
        self.objective = OBJECTIVES[method.objective]
        seed = self.args.seed if seed is None else seed
        self.unlearn_encs = encode_rows(unlearn_tokenizer, unlearn_rows, max_length, add_bos)
        self.unlearn_batches = Stream(len(self.unlearn_encs), method.unlearn_batch_size, seed + 1)
        self.unlearn_batches_drawn, self.unlearn_steps, self.unlearned_at = 0, [], set()
        guard_rows = guard_rows or []
        self.guard = Guard(method, encode_rows(unlearn_tokenizer, guard_rows, max_length, add_bos), guard_rows,
                           unlearn_tokenizer.pad_token_id, "trainer")
        if method.guard == "graceful" and not guard_rows:
            raise ValueError("the graceful guard needs guard_rows (e.g. some learning rows), or set guard: absolute / none")
        self.ref = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.unlearn_optimizer = (torch.optim.SGD(params, lr=method.unlearn_lr) if method.unlearn_optimizer == "separate"
                                  else torch.optim.AdamW(params, lr=method.unlearn_lr, weight_decay=0.0))
        self.add_callback(_AfterOptimizerStep(self))

    # -- the unlearning step ----------------------------------------------------------------------

    def maybe_unlearn(self, global_step: int) -> None:
        if global_step % self.method.unlearn_every or global_step in self.unlearned_at:
            return
        self.unlearned_at.add(global_step)
        if self.guard.stopped_at is None:
            self.unlearning_step(global_step)

    def _shard(self, idx: list[int]) -> list[int]:
        return idx[self.accelerator.process_index::self.accelerator.num_processes]

    def unlearning_step(self, global_step: int) -> bool:
        """One step of the method's objective on the next D_U batch (every process its shard, scaled so
        the averaged gradient is the batch mean). Returns whether it was taken and kept."""
        model, device = self.model_wrapped, self.args.device
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.objective.needs_ref and self.ref is None:
            self.ref = self._reference()
        idx = self.unlearn_batches.batch(self.unlearn_batches_drawn)
        self.unlearn_batches_drawn += 1
        mine = self._shard(idx)
        model.train()
        nll, mask, _ = forward_token_nll(model, collate([self.unlearn_encs[i] for i in mine], self.tok.pad_token_id, device))
        rows = (nll.detach().sum(1) / mask.sum(1).clamp_min(1)).sum()
        d_u_nll = (self.accelerator.reduce(rows, reduction="sum") / len(idx)).item()
        if not self.guard.allows(global_step, d_u_nll):
            return False
        if self.guard.watching():
            before = self.guard.nll(self.model, device)
            saved = [p.detach().clone() for p in params]
        ref = self.ref[mine].to(device, nll.dtype) if self.ref is not None else None
        per_row = self.objective(nll, mask, ref, **self.method.objective_args)
        loss = per_row.sum() * (self.accelerator.num_processes / len(idx))
        self.unlearn_optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        clip = self.args.max_grad_norm if self.args.max_grad_norm and self.args.max_grad_norm > 0 else float("inf")
        taken = clipped_update(params, self.unlearn_optimizer, clip)
        self.model.zero_grad(set_to_none=True)
        if self.guard.watching() and not self.guard.accepts(global_step, before, self.guard.nll(self.model, device)):
            with torch.no_grad():
                for p, old in zip(params, saved):
                    p.copy_(old)
            taken = False
        if taken:
            self.unlearn_steps.append(global_step)
        self.log({"unlearn_d_u_nll": d_u_nll, "unlearn_taken": float(taken)})
        return taken

    def _reference(self) -> torch.Tensor:
        given = given_reference_sums(self.unlearn_rows, self.unlearn_encs)
        return given if given is not None else reference_nll_sums(self.model, self.unlearn_encs, self.tok.pad_token_id)

    # -- checkpoints ------------------------------------------------------------------------------

    def lwf_state(self) -> dict:
        return {"drawn": self.unlearn_batches_drawn, "steps": self.unlearn_steps, "done": sorted(self.unlearned_at),
                "optimizer": self.unlearn_optimizer.state_dict(), "guard": self.guard.state(), "ref": self.ref}

    def load_lwf_state(self, s: dict) -> None:
        self.unlearn_batches_drawn, self.unlearn_steps, self.unlearned_at = s["drawn"], s["steps"], set(s["done"])
        self.unlearn_optimizer.load_state_dict(s["optimizer"])
        self.guard.load_state(s["guard"])
        self.ref = s["ref"]

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                from transformers.trainer_utils import get_last_checkpoint

                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            path = os.path.join(str(resume_from_checkpoint), STATE_FILE)
            if not os.path.exists(path):
                raise ValueError(f"{resume_from_checkpoint} holds no {STATE_FILE}: not a checkpoint of an LWFTrainer run")
            self.load_lwf_state(torch.load(path, map_location="cpu", weights_only=False))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def lwf_stats(self) -> dict:
        return {"unlearn_steps_taken": len(self.unlearn_steps), "unlearn_steps_at": self.unlearn_steps,
                "objective": self.method.objective, "unlearn_optimizer": self.method.unlearn_optimizer,
                "guard": self.guard.stats()}

