"""The unlearning schedule, the unlearning step, BSS, the guard, resume and determinism."""
import copy

import pytest
import torch

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.data import collate, encode_rows, forward_loss
from pipeline.data import Stream
from pipeline.bss import bss_term
from pipeline.callbacks import StopAfter
from pipeline.schedule import build_schedule
from pipeline.train import finetune


def test_periodic_schedule_fires_at_multiples():
    s = build_schedule(20, 4, "periodic")
    learn_seen, fired_after = 0, []
    for ev in s:
        if ev == "learn":
            learn_seen += 1
        else:
            fired_after.append(learn_seen)
    assert learn_seen == 20 and fired_after == [4, 8, 12, 16, 20]
    assert build_schedule(10, 3, "periodic").count("unlearn") == 3


def test_early_and_none_schedules():
    assert build_schedule(20, 4, "early") == ["unlearn"] * 5 + ["learn"] * 20
    assert build_schedule(7, 2, "none") == ["learn"] * 7


def test_stream_is_resumable_and_cycles_small_sets():
    a, b = Stream(5, 8, 3), Stream(5, 8, 3)
    assert [a.batch(k) for k in range(4)] == [b.batch(k) for k in range(4)]
    assert b.batch(2) == Stream(5, 8, 3).batch(2)  # pure function of k
    assert sorted(a.batch(0)[:5]) == [0, 1, 2, 3, 4]  # one full shuffle, then the next one


def _cfg(**kw):
    base = dict(max_steps=8, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=3, log_every=1)
    base.update(kw)
    return FinetuneConfig(**base)


def _lwf(unlearn="periodic", **kw):
    return MethodConfig(unlearn=unlearn, **{"unlearn_every": 2, "unlearn_batch_size": 3, "alpha": 1.0, **kw})


def _unlearn_rows():
    return [{"prompt": "kete lives in", "target": " rome"}, {"prompt": "dano lives in", "target": " oslo"},
            {"prompt": "12+3=", "target": "15"}]


def test_adamw_is_fused_on_plain_tensors_and_takes_the_same_steps():
    """pipeline.dist.adamw (every learning step of the fine-tune and of theta*_L): the fused kernel on
    plain CPU tensors, the same parameters as torch's default AdamW after several steps."""
    from pipeline import dist

    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5), torch.randn(3, 7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(6)]
    out = []
    for make in (lambda ps: dist.adamw(ps, lr=1e-2, weight_decay=0.1),
                 lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make(ps)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        out.append(ps)
        assert bool(opt.defaults.get("fused")) == (len(out) == 1)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(out[0][0], start[0])


def test_unlearn_events_in_log_at_multiples(tiny, rows):
    """The schedule, not the guard (a random model's GA steps at 0.1 raise the guard rows' perplexity >10%)."""
    model = copy.deepcopy(tiny[0])
    log, stats = finetune(model, tiny[1], rows, _unlearn_rows(), _cfg(), _lwf(guard="none"), 0, 48)
    assert [r["step"] for r in log if r["kind"] == "unlearn"] == [2, 4, 6, 8]
    assert stats["unlearn_steps_taken"] == 4 and stats["learn_steps"] == 8


def test_unlearning_step_raises_loss_on_its_batch(tiny):
    """The 'early' schedule starts with unlearning events: stop after the first one and compare
    the NLL of the unlearning batch (here the whole 3-row D_U) before and after it."""
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    u = _unlearn_rows()
    batch = collate(encode_rows(tok, u, 48), tok.pad_token_id)
    before = forward_loss(model, batch)[0].mean().item()
    cfg = _cfg(max_steps=1, lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, tok, [{"prompt": "a", "target": "b"}], u, cfg, _lwf("early", unlearn_every=1), 0, 48,
                 callbacks=[StopAfter(1)])
    after = forward_loss(model, batch)[0].mean().item()
    assert after > before


def test_bss_term_matches_direct_svd():
    torch.manual_seed(0)
    X = torch.randn(6, 4)
    s = torch.linalg.svd(X).S
    assert bss_term(X, 1, 0.5).item() == pytest.approx(0.5 * s[-1].item() ** 2, rel=1e-5)
    assert bss_term(X, 2, 1.0).item() == pytest.approx((s[-1] ** 2 + s[-2] ** 2).item(), rel=1e-5)


def test_bss_method_shrinks_the_smallest_singular_values(tiny, rows):
    """bss adds eta * (sum of the k smallest squared singular values of the batch's pooled target
    features) to the learning loss: with eta 0 it is vanilla, weight for weight; with a large eta
    the fine-tuned model's smallest singular value over the training rows ends well below vanilla's
    (lr 1e-2: at the test default 1e-3, six clipped AdamW steps are too few to show it)."""
    from pipeline.data import collate, encode_rows, forward_loss
    from pipeline.bss import pooled_target_features

    tok = tiny[1]
    batch = collate(encode_rows(tok, rows, 48), tok.pad_token_id)

    def trained(method, **kw):
        model = copy.deepcopy(tiny[0])
        log, stats = finetune(model, tok, rows, [], _cfg(max_steps=6, lr=1e-2, **kw), method, 0, 48)
        assert len([r for r in log if r["kind"] == "learn"]) == 6 and stats["weights_finite"]
        with torch.no_grad():
            _, out = forward_loss(model, batch, output_hidden_states=True)
        smallest = torch.linalg.svdvals(pooled_target_features(out.hidden_states[-1], batch["labels"]))[-1]
        return model, float(smallest)

    vanilla, s_vanilla = trained(MethodConfig())
    same, _ = trained(MethodConfig(bss=True), bss_eta=0.0)
    for (n, a), b in zip(vanilla.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), n
    _, s_bss = trained(MethodConfig(bss=True), bss_eta=10.0, bss_k=1)
    assert s_bss < 0.5 * s_vanilla, (s_bss, s_vanilla)


def test_resume_gives_identical_weights(tmp_path, tiny, rows):
    tok = tiny[1]
    cfg, method = _cfg(max_steps=10, checkpoint_every=4), _lwf()
    ref = copy.deepcopy(tiny[0])
    ref_log, _ = finetune(ref, tok, rows, _unlearn_rows(), cfg, method, 7, 48)

    crashed = copy.deepcopy(tiny[0])
    ckpt = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune(crashed, tok, rows, _unlearn_rows(), cfg, method, 7, 48, ckpt_path=ckpt, callbacks=[StopAfter(6)])
    assert ckpt.exists()
    resumed = copy.deepcopy(tiny[0])  # a fresh process would reload the base model
    log, _ = finetune(resumed, tok, rows, _unlearn_rows(), cfg, method, 7, 48, ckpt_path=ckpt)
    assert not ckpt.exists()
    for (n, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]


def test_same_seed_same_weights_other_seed_differs(tiny, rows):
    out = []
    for seed in (1, 1, 2):
        m = copy.deepcopy(tiny[0])
        finetune(m, tiny[1], rows, [], _cfg(max_steps=4), MethodConfig(), seed, 48)
        out.append(torch.cat([p.flatten() for p in m.parameters()]))
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])


def test_checkpoint_of_another_d_u_of_the_same_size_is_refused(tmp_path, tiny, rows, caplog):
    """The fingerprint hashes the content of D_U (and of the learning rows and starting weights),
    not its size: a crashed run's checkpoint is not resumed with a different D_U of the same size."""
    import logging

    tok = tiny[1]
    cfg, method = _cfg(max_steps=10, checkpoint_every=4), _lwf()
    ckpt = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune(copy.deepcopy(tiny[0]), tok, rows, _unlearn_rows(), cfg, method, 7, 48, ckpt_path=ckpt,
                 callbacks=[StopAfter(6)])
    other = [dict(r, target=" riga") for r in _unlearn_rows()]  # same size, other content
    ref = copy.deepcopy(tiny[0])
    finetune(ref, tok, rows, other, cfg, method, 7, 48)
    with caplog.at_level(logging.INFO, logger="lwf"):
        resumed = copy.deepcopy(tiny[0])
        finetune(resumed, tok, rows, other, cfg, method, 7, 48, ckpt_path=ckpt)
    assert "ignoring checkpoint" in caplog.text and "resumed" not in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))
    # and a changed base model (same shapes) refuses it too
    with pytest.raises(KeyboardInterrupt):
        finetune(copy.deepcopy(tiny[0]), tok, rows, other, cfg, method, 7, 48, ckpt_path=ckpt, callbacks=[StopAfter(6)])
    moved = copy.deepcopy(tiny[0])
    with torch.no_grad():
        next(moved.parameters()).add_(1e-3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lwf"):
        finetune(moved, tok, rows, other, cfg, method, 7, 48, ckpt_path=ckpt)
    assert "ignoring checkpoint" in caplog.text
