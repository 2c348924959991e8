"""Forget-then-learn (pipeline/negation.py, `negate_steps`): the task negation is the parameter
arithmetic it names, computed independently; it forgets D_U (its NLL rises above the base model's);
a killed run resumes without negating twice."""
import copy

import pytest
import torch

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.callbacks import StopAfter
from pipeline.optimum import plain_finetune
from pipeline.train import finetune


@pytest.fixture
def known(tiny, rows, d_u):
    """The tiny model after 60 steps on the learning rows and D_U: it holds D_U."""
    model = copy.deepcopy(tiny[0])
    finetune(model, tiny[1], rows + d_u, [], FinetuneConfig(max_steps=60, batch_size=8, lr=3e-3, warmup_steps=0),
             MethodConfig(), 0, 48)
    return model, tiny[1]


def _nll(model, tok, rows):
    from pipeline.data import collate, encode_rows, forward_token_nll

    with torch.no_grad():
        nll, mask, _ = forward_token_nll(model, collate(encode_rows(tok, rows, 48), tok.pad_token_id))
    return (nll.sum(1) / mask.sum(1)).mean().item()


FTL = dict(negate_steps=4, negate_lr=3e-3, negate_scale=0.5, unlearn_batch_size=4)
RECIPE = dict(max_steps=6, batch_size=4, lr=3e-4, warmup_steps=0)


def test_negation_is_theta0_minus_scale_times_the_d_u_update_then_vanilla(known, rows, d_u):
    """Reference: plain AdamW steps on D_U (pipeline.optimum.plain_finetune, the batches of seed + 2),
    theta_0 - 0.5 * (theta_D - theta_0), then vanilla's fine-tune; the method gives the same weights."""
    model, tok = known
    ftl = copy.deepcopy(model)
    _, stats = finetune(ftl, tok, rows, d_u, FinetuneConfig(**RECIPE), MethodConfig(**FTL), 0, 48)
    ref = copy.deepcopy(model)
    start = [p.detach().clone() for p in ref.parameters()]
    plain_finetune(ref, tok, d_u, 4, 3e-3, 4, 0 + 2, 48)
    with torch.no_grad():
        for p, p0 in zip(ref.parameters(), start):
            p.copy_(p0 - 0.5 * (p - p0))
    finetune(ref, tok, rows, [], FinetuneConfig(**RECIPE), MethodConfig(), 0, 48)
    for a, b in zip(ftl.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    n = stats["negation"]
    assert n["steps"] == 4 and n["scale"] == 0.5 and n["update_norm"] > 0 and n["d_u_nll_last"] < n["d_u_nll_first"]
    assert stats["unlearn_steps_scheduled"] == 0 and stats["learn_steps"] == 6


def test_negation_forgets_d_u(known, rows, d_u):
    """With learning all but off, the negated model's D_U NLL is above the starting model's, and more
    so at a larger scale."""
    model, tok = known
    before = _nll(model, tok, d_u)
    off = FinetuneConfig(**{**RECIPE, "lr": 1e-12})
    after = {}
    for scale in (0.5, 2.0):
        m = copy.deepcopy(model)
        finetune(m, tok, rows, d_u, off, MethodConfig(**{**FTL, "negate_scale": scale}), 0, 48)
        after[scale] = _nll(m, tok, d_u)
    assert before < after[0.5] < after[2.0], (before, after)


def test_a_killed_forget_then_learn_run_resumes_without_negating_twice(known, rows, d_u, tmp_path):
    model, tok = known
    cfg = FinetuneConfig(**RECIPE, checkpoint_every=1)
    whole = copy.deepcopy(model)
    _, stats = finetune(whole, tok, rows, d_u, cfg, MethodConfig(**FTL), 0, 48)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune(copy.deepcopy(model), tok, rows, d_u, cfg, MethodConfig(**FTL), 0, 48, ckpt_path=ckpt,
                 callbacks=[StopAfter(3)])
    resumed = copy.deepcopy(model)
    _, again = finetune(resumed, tok, rows, d_u, cfg, MethodConfig(**FTL), 0, 48, ckpt_path=ckpt)
    assert again["negation"] == stats["negation"]
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_negation_needs_d_u_and_training():
    with pytest.raises(ValueError, match="negate_steps: 0"):
        MethodConfig(train=False, negate_steps=3)
