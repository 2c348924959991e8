"""The unlearning step does what its name says, in every `unlearn_optimizer` mode (objective `ga`;
tests/test_objectives.py checks every objective).

Setting: the embedded (lab) model, 12 learning steps of AdamW on the learning task, then one
unlearning step on a D_U batch (the whole 8-row D_U). "Skip" = the same run stopped right before
the unlearning event (same learning batches, same weights up to there).
"""
import copy

import pytest
import torch

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.grads import ascent_direction
from pipeline.callbacks import StopAfter
from pipeline.train import finetune

N = 12  # learning steps before the unlearning step


UNLEARN_KEYS = set(MethodConfig.model_fields) - {"unlearn", "selection", "bss", "match_steps"}


def _cfg(mode, **kw):
    """(the learning recipe, the unlearning settings of a method) with the keys split where they live."""
    base = dict(max_steps=N, batch_size=4, lr=3e-4, warmup_steps=0, unlearn_every=N, unlearn_batch_size=8,
                alpha=0.1, unlearn_lr=0.1, unlearn_optimizer=mode, grad_clip=1.0, log_every=1)
    base.update(kw)
    return (FinetuneConfig(**{k: v for k, v in base.items() if k not in UNLEARN_KEYS}),
            {k: v for k, v in base.items() if k in UNLEARN_KEYS})


def _method(ukw, **kw):
    return MethodConfig(**{**ukw, **kw})


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _nll_and_grad(model, tok, rows):
    return ascent_direction(model, tok, rows, 48)


def _run(tiny, rows, d_u, cfg, method, stop=None):
    model = copy.deepcopy(tiny[0])
    if stop is None:
        log, stats = finetune(model, tiny[1], rows, d_u, cfg, method, 0, 48)
        return model, log, stats
    with pytest.raises(KeyboardInterrupt):
        finetune(model, tiny[1], rows, d_u, cfg, method, 0, 48, callbacks=[StopAfter(stop)])
    return model, None, None


def separate_step(tiny, rows, d_u, mode, **kw):
    """(NLL of D_U skipping the unlearning step, NLL after it, cosine(update, ascent direction))."""
    cfg, ukw = _cfg(mode, **kw)
    method = _method(ukw, unlearn="periodic")
    skip, _, _ = _run(tiny, rows, d_u, cfg, method, stop=N)
    done, log, _ = _run(tiny, rows, d_u, cfg, method)
    assert [r["kind"] for r in log].count("unlearn") == 1
    before, ascent = _nll_and_grad(skip, tiny[1], d_u)
    after, _ = _nll_and_grad(done, tiny[1], d_u)
    cos = torch.nn.functional.cosine_similarity(_flat(done) - _flat(skip), ascent, dim=0).item()
    return before, after, cos


def test_separate_step_ascends_its_batch(tiny, rows, d_u):
    before, after, cos = separate_step(tiny, rows, d_u, "separate")
    assert after > before
    assert cos > 0.5


def test_shared_step_fails_the_separate_check(tiny, rows, d_u):
    """The defect that `separate` fixes: with the learning steps' AdamW state the 'unlearning'
    step is mostly one more learning step (momentum, Adam's normalisation)."""
    before, after, cos = separate_step(tiny, rows, d_u, "shared")
    assert cos < 0.5
    sep = separate_step(tiny, rows, d_u, "separate")
    assert (after - before) < (sep[1] - sep[0])


def test_separate_rise_grows_with_unlearn_lr(tiny, rows, d_u):
    rises = [(lambda b, a, c: a - b)(*separate_step(tiny, rows, d_u, "separate", unlearn_lr=lr)) for lr in (0.03, 0.1, 0.3)]
    assert 0 < rises[0] < rises[1] < rises[2]


def joint_rise(tiny, rows, d_u, alpha):
    """NLL of D_U after the joint step minus after the same learning step without the term."""
    cfg, ukw = _cfg("joint", alpha=alpha)
    joint, log, stats = _run(tiny, rows, d_u, cfg, _method(ukw, unlearn="periodic"))
    plain, _, _ = _run(tiny, rows, d_u, cfg, MethodConfig())
    assert [r["step"] for r in log if r["kind"] == "unlearn"] == [N] and stats["optimizer_steps"] == N
    return _nll_and_grad(joint, tiny[1], d_u)[0] - _nll_and_grad(plain, tiny[1], d_u)[0]


def test_joint_step_ascends_and_alpha_matters(tiny, rows, d_u):
    rises = [joint_rise(tiny, rows, d_u, a) for a in (0.1, 0.3, 1.0)]
    assert 0 < rises[0] < rises[1] < rises[2]


def test_early_and_periodic_unlearn_at_the_same_step_size(tiny, rows, d_u):
    for mode, expected in (("separate", 0.05), ("shared", 3e-4)):
        lrs = {}
        for sched in ("early", "periodic"):
            cfg, ukw = _cfg(mode, max_steps=8, unlearn_every=4, warmup_steps=4, lr_schedule="linear", unlearn_lr=0.05)
            _, log, _ = _run(tiny, rows, d_u, cfg, _method(ukw, unlearn=sched))
            lrs[sched] = [r["lr"] for r in log if r["kind"] == "unlearn"]
        assert lrs["early"] == lrs["periodic"] == [expected, expected], mode


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedule_warms_up_then_decays_to_zero(tiny, rows, schedule):
    cfg, _ = _cfg("separate", max_steps=10, warmup_steps=4, lr_schedule=schedule, lr=1e-3)
    model = copy.deepcopy(tiny[0])
    log, _ = finetune(model, tiny[1], rows, [], cfg, MethodConfig(), 0, 48)
    lrs = [r["lr"] for r in log if r["kind"] == "learn"]
    assert lrs[:5] == pytest.approx([0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])  # transformers: warmup from 0
    tail = lrs[4:]
    if schedule == "constant":
        assert tail == pytest.approx([1e-3] * 6)
    else:  # decays over the remaining steps towards 0 at step 10 (the last step's LR is > 0)
        assert all(a > b for a, b in zip(tail, tail[1:])) and 0 < tail[-1] < 3e-4


def test_vanilla_matched_takes_the_extra_steps(tiny, rows, d_u):
    from pipeline.schedule import learning_steps

    cfg35, ukw = _cfg("separate", max_steps=35, unlearn_every=4)
    assert learning_steps(cfg35, _method(ukw, match_steps=True)) == 43
    assert learning_steps(cfg35, _method(ukw, match_steps=True, unlearn_optimizer="joint")) == 35  # no extra step
    cfg8, ukw = _cfg("separate", max_steps=8, unlearn_every=4)
    _, log, stats = _run(tiny, rows, d_u, cfg8, _method(ukw, match_steps=True))
    assert stats["learn_steps"] == 10 and stats["optimizer_steps"] == 10
    _, _, lwf = _run(tiny, rows, d_u, cfg8, _method(ukw, unlearn="periodic"))
    assert lwf["optimizer_steps"] == 10


@pytest.mark.parametrize("mode,kw", [("separate", {"unlearn_lr": 50.0}), ("joint", {"alpha": 1e6}),
                                     ("shared", {"alpha": 1e6})])
def test_absolute_guard_stops_extreme_unlearning_in_every_mode(tiny, rows, d_u, mode, kw):
    cfg, ukw = _cfg(mode, max_steps=40, unlearn_every=1, lr=5e-2, unlearn_max_loss=7.0, guard="absolute", **kw)
    model = copy.deepcopy(tiny[0])
    log, stats = finetune(model, tiny[1], rows, d_u, cfg, _method(ukw, unlearn="periodic"), 0, 48)
    assert stats["unlearn_stopped_at"] is not None
    assert any(r["kind"] == "unlearn_stopped" for r in log)
    assert stats["unlearn_steps_taken"] < 40
    assert all(r["loss"] <= 7.0 for r in log if r["kind"] == "unlearn")
    assert stats["weights_finite"] and all(torch.isfinite(p).all() for p in model.parameters())
