"""Forget-then-learn (F-Learning, Ni et al. 2023, "Forgetting before Learning"; task negation):
before the first learning step, fine-tune the model on D_U and subtract that update from where it
started,

    theta_D  = theta_0 after `negate_steps` AdamW steps at `negate_lr` on D_U (mean target NLL,
               batches of `unlearn_batch_size`, clipped like every step)
    theta    = theta_0 - negate_scale * (theta_D - theta_0)

then learn as vanilla does. A peer of LWF that reported gains on knowledge-conflict updating: it
forgets once, by parameter arithmetic, where LWF interleaves unlearning steps with learning.
`Finetune.run` calls `negate` once per run (a resumed run does not negate twice)."""
from __future__ import annotations

import logging

import torch

from . import dist
from .data import Stream
from .step import row_losses

log = logging.getLogger("lwf")


def negate(run) -> dict:
    """Apply the method's task negation to `run.model` (a `pipeline.train.Finetune`) on its D_U rows;
    returns what it did: steps, lr, scale, the D_U NLL of the first and last negation batch, and the
    size of the subtracted update (L2 norm over the trainable parameters)."""
    m = run.method
    params = run.params
    start = [p.detach().clone() for p in params]
    opt = dist.adamw(params, lr=m.negate_lr, weight_decay=0.0)
    batches = Stream(len(run.unlearn_encs), m.unlearn_batch_size, run.seed + 2)
    first = last = None
    for k in range(m.negate_steps):
        idx = batches.batch(k)
        nll, mask, _, _ = run.forward(run.unlearn_encs, dist.shard(idx))
        loss = row_losses(nll, mask).sum() * (run.world / len(idx))
        run.take_step(loss, opt)
        last = run.batch_mean(nll, mask, len(idx))
        first = last if first is None else first
    norm2 = 0.0
    with torch.no_grad():
        for p, p0 in zip(params, start):
            delta = p - p0
            norm2 += float(dist.full_tensor(delta).double().pow(2).sum())  # (whole tensors under FSDP)
            p.copy_(p0 - m.negate_scale * delta)
    stats = {"steps": m.negate_steps, "lr": m.negate_lr, "scale": m.negate_scale, "d_u_nll_first": first,
             "d_u_nll_last": last, "update_norm": norm2 ** 0.5}
    log.info("stage finetune: %s forget-then-learn: %d steps on %d D_U rows (NLL %.4f -> %.4f), update of norm "
             "%.4g subtracted x %g", run.run_id, m.negate_steps, len(run.unlearn_encs), first, last,
             stats["update_norm"], m.negate_scale)
    return stats
