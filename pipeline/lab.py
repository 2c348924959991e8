"""Pretraining of the embedded lab base model (and of the negative-transfer control).

The corpus comes from `pipeline/tasks/lab.py`; `conflict_weight` sets the share of conflicting
"X lives in <wrong city>" facts. The control model (`control_lab`) is pretrained on the same corpus
with those facts' cities drawn at random (`control.corpus: random_cities`, the default: it knows
the prompt format and the city names but no rule) or without them (`without_facts`).
"""
from __future__ import annotations

import logging
import math
import time

import torch
from tqdm import tqdm

from .data import collate, encode
from .models import build_byte_tokenizer, set_seed, tiny_llama
from .step import optimizer_step
from .tasks.lab import pretrain_corpus

log = logging.getLogger("lwf")


def control_lab(lab, corpus: str):
    """The lab settings of the negative-transfer control's pretraining (`control.corpus`)."""
    if corpus == "random_cities":
        return lab.model_copy(update={"conflict_noise": 1.0})
    return lab.model_copy(update={"conflict_weight": 0.0})


def pretrain_lab(lab, max_length: int, desc: str = "pretrain", stage: str = "base_model"):
    """Build the tokenizer and a tiny Llama and pretrain it; returns (model, tokenizer, stats)."""
    set_seed(lab.seed)
    tok = build_byte_tokenizer()
    model = tiny_llama(len(tok), lab, max_len=max_length)
    n_params = sum(p.numel() for p in model.parameters())
    texts = pretrain_corpus(lab.pretrain_steps * lab.pretrain_batch_size, lab.seed, lab.conflict_weight,
                            lab.conflict_noise)
    log.info("stage %s: pretraining a %.2fM-parameter Llama on %d lab texts (conflict share %.2f, "
             "random cities %.2f)", stage, n_params / 1e6, len(texts), lab.conflict_weight, lab.conflict_noise)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lab.pretrain_lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, lab.pretrain_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / lab.pretrain_steps)))
    )
    model.train()
    t0, losses = time.time(), []
    bs = lab.pretrain_batch_size
    for step in tqdm(range(lab.pretrain_steps), desc=desc, mininterval=5, leave=False):
        encs = [encode(tok, "", t, max_length) for t in texts[step * bs:(step + 1) * bs]]
        batch = collate(encs, tok.pad_token_id)
        out = model(**batch)
        optimizer_step(out.loss, params, opt, grad_clip=1.0)
        sched.step()
        if step % 50 == 0 or step == lab.pretrain_steps - 1:
            losses.append((step, out.loss.item()))
    model.eval()
    stats = {"n_params": n_params, "steps": lab.pretrain_steps, "final_loss": losses[-1][1],
             "seconds": round(time.time() - t0, 1), "conflict_weight": lab.conflict_weight,
             "conflict_noise": lab.conflict_noise}
    log.info("stage %s: pretrained in %.0fs, final loss %.3f", stage, stats["seconds"], stats["final_loss"])
    return model, tok, stats
