"""The unlearning guard (pipeline/guard.py) and the `adam` unlearning step do what their names say:
the graceful guard undoes and stops a step that damages the guard rows, and only such a step
(learning alone never trips it, where the absolute D_U bound trips on a large vocabulary before any
unlearning); every decision is in the stats; `adam` moves firmly held knowledge further than the
plain SGD step at the same step size."""
import copy
import math

import pytest
import torch

from pipeline.config import FinetuneConfig, LabConfig, MethodConfig
from pipeline.models import tiny_llama
from pipeline.callbacks import StopAfter
from pipeline.train import finetune

RECIPE = dict(max_steps=12, batch_size=4, lr=3e-4, warmup_steps=0)


def _d_u():
    from pipeline.tasks.lab import count_row, neutral_row

    return [neutral_row(a, b) for a, b in ((12, 3), (45, 7), (60, 2), (31, 9))] + \
           [count_row(n) for n in (417, 238, 555, 901)]


def _nll(model, tok, rows):
    from pipeline.data import collate, encode_rows, forward_token_nll

    with torch.no_grad():
        nll, mask, _ = forward_token_nll(model, collate(encode_rows(tok, rows, 48), tok.pad_token_id))
    return (nll.sum(1) / mask.sum(1)).mean().item()


def test_graceful_guard_undoes_a_collapsing_ga_step_and_stops(tiny, rows):
    """GA at a huge step wrecks the model in one step: the guard puts the weights back and stops, so
    the run ends with exactly vanilla's weights (the SGD step has no state to leave behind)."""
    model, tok = tiny
    ga = MethodConfig(unlearn="periodic", objective="ga", unlearn_every=4, unlearn_batch_size=8, unlearn_lr=50.0)
    lwf, vanilla = copy.deepcopy(model), copy.deepcopy(model)
    log, stats = finetune(lwf, tok, rows, _d_u(), FinetuneConfig(**RECIPE), ga, 0, 48)
    finetune(vanilla, tok, rows, [], FinetuneConfig(**RECIPE), MethodConfig(), 0, 48)
    guard = stats["guard"]
    assert stats["unlearn_steps_scheduled"] == 3 and stats["unlearn_steps_taken"] == 0
    assert stats["unlearn_stopped_at"] == guard["stopped_at"] == 4
    assert guard["kind"] == "graceful" and guard["checks"] == 1 and guard["largest_ppl_rise"] > 0.1
    assert "raised the guard rows' NLL" in guard["reason"]
    assert [r["kind"] for r in log if r["kind"] != "learn"] == ["unlearn", "unlearn_stopped"]
    for a, b in zip(lwf.parameters(), vanilla.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_graceful_guard_lets_gentle_unlearning_run_and_records_every_check(tiny, rows):
    model, tok = tiny
    npo = MethodConfig(unlearn="periodic", objective="npo", unlearn_every=2, unlearn_batch_size=8, unlearn_lr=0.03)
    log, stats = finetune(copy.deepcopy(model), tok, rows, _d_u(), FinetuneConfig(**RECIPE), npo, 0, 48)
    guard = stats["guard"]
    assert stats["unlearn_steps_taken"] == stats["unlearn_steps_scheduled"] == 6
    assert guard["checks"] == 6 and guard["stopped_at"] is None and guard["reason"] is None
    assert 0 < abs(guard["largest_ppl_rise"]) < 0.1


def test_guard_bound_is_relative_to_the_step_not_to_learning(tiny, rows):
    """Learning may move the guard rows' NLL anywhere; each unlearning step is judged on its own rise:
    a bound of +5% perplexity stops a run whose steps raise it by more, +100% lets the same run finish."""
    model, tok = tiny
    base = dict(unlearn="periodic", objective="ga", unlearn_every=2, unlearn_batch_size=8, unlearn_lr=0.3)
    tight = finetune(copy.deepcopy(model), tok, rows, _d_u(), FinetuneConfig(**RECIPE),
                     MethodConfig(**base, guard_max_rise=0.05), 0, 48)[1]
    loose = finetune(copy.deepcopy(model), tok, rows, _d_u(), FinetuneConfig(**RECIPE),
                     MethodConfig(**base, guard_max_rise=1.0), 0, 48)[1]
    assert loose["unlearn_steps_taken"] == 6 and loose["guard"]["stopped_at"] is None
    assert 0.05 < loose["guard"]["largest_ppl_rise"] < 1.0
    assert tight["unlearn_steps_taken"] < 6 and tight["guard"]["stopped_at"] is not None


def _judge(steps, **bounds):
    """Feed a Guard the (before, after) NLLs of successive unlearning steps; the steps it accepted and its stats."""
    from pipeline.guard import Guard

    g = Guard(MethodConfig(unlearn="periodic", **bounds), [], [], 0)
    accepted = 0
    for i, (before, after) in enumerate(steps):
        g.allows(4 * (i + 1), 1.0)
        if not g.accepts(4 * (i + 1), before, after):
            break
        accepted += 1
    return accepted, g.stats()


def test_guard_bounds_the_perplexity_ratio_not_the_nlls_relative_rise():
    """On rows the run has nearly fit (NLL 0.094) a rise of 0.075 nats is +80% of the NLL but +7.8% of
    the perplexity: taken under the +10% bound; the same +10% stops 0.11 nats (+11.6%) at any NLL."""
    assert _judge([(0.0938, 0.1688)])[0] == 1
    assert _judge([(2.0, 2.11)])[0] == 0
    n, stats = _judge([(0.05, 0.16)])
    assert n == 0 and "perplexity +11.6%" in stats["reason"] and abs(stats["largest_ppl_rise"] - 0.1163) < 1e-3


def test_total_bound_stops_many_small_steps_that_add_up():
    """Each step +4.9% of the perplexity passes the per-step bound; with guard_max_total_rise 0.12 the
    third (together +15.4%) is refused; without it all five are taken."""
    steps = [(1.0, 1.048)] * 5
    assert _judge(steps)[0] == 5
    n, stats = _judge(steps, guard_max_total_rise=0.12)
    assert n == 2 and "together" in stats["reason"] and stats["stopped_at"] == 12
    assert abs(stats["total_ppl_rise"] - (math.exp(2 * 0.048) - 1)) < 1e-9


def test_on_a_large_vocabulary_the_absolute_bound_stops_before_unlearning_and_graceful_does_not(tiny, rows):
    """A randomly initialised model over a 49,152-token vocabulary (SmolLM2's size) starts with a D_U
    NLL near ln(49152) = 10.8: the absolute bound (6.0) refuses every step, the graceful guard takes
    them all (NPO at its default step)."""
    torch.manual_seed(0)
    big = tiny_llama(49152, LabConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), max_len=64)
    tok = tiny[1]
    npo = dict(unlearn="periodic", objective="npo", unlearn_every=4, unlearn_batch_size=8, unlearn_lr=0.03)
    cfg = FinetuneConfig(**{**RECIPE, "max_steps": 8})
    _, absolute = finetune(copy.deepcopy(big), tok, rows, _d_u(), cfg, MethodConfig(**npo, guard="absolute"), 0, 48)
    _, graceful = finetune(copy.deepcopy(big), tok, rows, _d_u(), cfg, MethodConfig(**npo), 0, 48)
    assert absolute["unlearn_steps_taken"] == 0 and "above unlearn_max_loss" in absolute["guard"]["reason"]
    assert graceful["unlearn_steps_taken"] == graceful["unlearn_steps_scheduled"] == 2


def test_resume_keeps_the_guard_record(tiny, rows, tmp_path):
    model, tok = tiny
    ga = MethodConfig(unlearn="periodic", objective="ga", unlearn_every=2, unlearn_batch_size=8, unlearn_lr=0.3,
                      guard_max_rise=1.0)
    cfg = FinetuneConfig(**RECIPE, checkpoint_every=1)
    _, whole = finetune(copy.deepcopy(model), tok, rows, _d_u(), cfg, ga, 0, 48)
    ckpt = tmp_path / "run.pt"
    killed = copy.deepcopy(model)
    with pytest.raises(KeyboardInterrupt):
        finetune(killed, tok, rows, _d_u(), cfg, ga, 0, 48, ckpt_path=ckpt, callbacks=[StopAfter(7)])
    _, resumed = finetune(copy.deepcopy(model), tok, rows, _d_u(), cfg, ga, 0, 48, ckpt_path=ckpt)
    assert resumed["guard"] == whole["guard"] and resumed["guard"]["checks"] == 6


@pytest.fixture(scope="module")
def knows(tiny, rows):
    """The tiny model after 100 steps on the learning rows and D_U: it holds D_U firmly (NLL < 0.3)."""
    model = copy.deepcopy(tiny[0])
    finetune(model, tiny[1], rows + _d_u(), [], FinetuneConfig(max_steps=100, batch_size=8, lr=3e-3, warmup_steps=0),
             MethodConfig(), 0, 48)
    assert _nll(model, tiny[1], _d_u()) < 0.3
    return model, tiny[1]


def test_adam_unlearning_moves_firmly_held_knowledge_where_sgd_hardly_does(knows, rows):
    """Ten NPO unlearning steps at the same step size 0.01 on knowledge the model holds firmly: the
    plain SGD step (gradients small) barely raises its NLL, AdamW with its own state (normalised) at
    least doubles it, and more than SGD does by a wide margin."""
    model, tok = knows
    before = _nll(model, tok, _d_u())
    cfg = FinetuneConfig(max_steps=10, batch_size=4, lr=1e-9, warmup_steps=0)  # learning all but off
    rise = {}
    for opt in ("separate", "adam"):
        m = copy.deepcopy(model)
        method = MethodConfig(unlearn="periodic", objective="npo", unlearn_every=1, unlearn_batch_size=8,
                              unlearn_lr=0.01, unlearn_optimizer=opt, guard="none")
        _, stats = finetune(m, tok, rows, _d_u(), cfg, method, 0, 48)
        assert stats["unlearn_steps_taken"] == 10
        rise[opt] = _nll(m, tok, _d_u()) - before
    assert rise["adam"] > before and rise["adam"] > 10 * max(rise["separate"], 1e-6)


def test_the_guard_says_when_it_watches_too_few_general_text_rows(monkeypatch, caplog):
    """data.general.n_train below guard_rows leaves the graceful guard nearly blind to fluency
    (every shipped preset had n_train 1: 16 learning rows and one general-text row): the run says so."""
    import pandas as pd

    import pipeline.confidence
    import pipeline.stage
    from pipeline import paths
    from pipeline.config import parse_config
    from pipeline.runs import run_rows

    general_rows = {"n": 1}
    monkeypatch.setattr(pipeline.stage, "load_rows", lambda path, split: [{"prompt": f"{path} {i}"} for i in range(
        general_rows["n"] if path == paths.GENERAL_DATA else 40)])
    monkeypatch.setattr(pd, "read_parquet", lambda path: None)
    monkeypatch.setattr(pipeline.confidence, "unlearn_set_with_references", lambda table, selection: [])
    cfg = parse_config({})
    with caplog.at_level("WARNING", logger="lwf"):
        _, _, guard = run_rows(cfg, cfg.methods["lwf"])
    assert len(guard) == 17 and "only 1 general-text row(s)" in caplog.text
    caplog.clear()
    general_rows["n"] = 16
    with caplog.at_level("WARNING", logger="lwf"):
        _, _, guard = run_rows(cfg, cfg.methods["lwf"])
        run_rows(cfg, cfg.methods["vanilla"])  # no guard: nothing to say
    assert len(guard) == 32 and "general-text" not in caplog.text


def test_a_guard_check_scores_each_row_as_alone_and_pads_label_rows_apart_from_text_rows(tiny):
    """The guard's NLL is the mean of each row's own NLL (a row scored alone: the brute-force
    reference), and rows that score one short answer are batched apart from rows that score a whole
    text, so the output layer runs at (nearly) only real target positions."""
    from pipeline.data import collate, encode_rows, forward_token_nll
    from pipeline.guard import GUARD_BATCH, Guard

    model, tok = tiny
    short = [{"prompt": f"{a} + {a} =", "target": f" {2 * a}"} for a in range(GUARD_BATCH)]
    text = [{"prompt": "", "target": "the quick brown fox jumps" * (1 + a % 2)}
            for a in range(GUARD_BATCH)]
    rows = [r for pair in zip(short, text) for r in pair]  # interleaved: list order would mix them
    encs = encode_rows(tok, rows, 64)
    guard = Guard(MethodConfig(unlearn="periodic"), encs, rows, tok.pad_token_id)
    kept = []
    forward = model.forward

    def spy(input_ids=None, attention_mask=None, logits_to_keep=0, **kw):
        kept.append(tuple(logits_to_keep.shape))
        return forward(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kw)

    model.forward = spy
    try:
        got = guard.nll(model, torch.device("cpu"))
    finally:
        del model.forward
    alone = []
    with torch.no_grad():
        for e in encs:
            nll, mask, _ = forward_token_nll(model, collate([e], tok.pad_token_id))
            alone.append((nll.sum() / mask.sum()).item())
    assert got == pytest.approx(sum(alone) / len(alone), rel=1e-5)
    longest = max(sum(x != -100 for x in e.labels) for e in encs)
    assert sum(b * k for b, k in kept) <= GUARD_BATCH * (longest + 4)  # not 2 * GUARD_BATCH * longest
