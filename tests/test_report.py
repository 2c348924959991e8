"""Aggregation and the paired bootstrap."""
import numpy as np
import pytest
import torch

from pipeline.report import markdown, paired_bootstrap, perplexity_bootstrap, summarize


def test_bootstrap_constant_difference_has_zero_width():
    m, lo, hi = paired_bootstrap(np.full((3, 50), 0.2), 500)
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2) and hi == pytest.approx(0.2)


def test_bootstrap_matches_normal_theory_on_a_known_case():
    """One seed, n iid items with sd 1: the 95% interval of the mean is about ±1.96/sqrt(n)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, size=(1, 2000))
    m, lo, hi = paired_bootstrap(x, 4000, seed=1)
    half = 1.96 * x.std() / np.sqrt(x.shape[1])
    assert m == pytest.approx(x.mean())
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert lo < m < hi


def test_summarize_means_stds_and_deltas(eval_result):
    evals = {"vanilla": eval_result({0: [0, 1, 0, 1], 1: [0, 0, 0, 1]}), "lwf": eval_result({0: [1, 1, 0, 1], 1: [1, 0, 0, 1]})}
    s = summarize(evals, [0, 1], 300)
    assert s["vanilla"]["learn_score"] == pytest.approx(0.375)
    assert s["lwf"]["learn_score_seeds"] == [0.75, 0.5]
    assert s["lwf"]["learn_score_std"] == pytest.approx(np.std([0.75, 0.5], ddof=1))
    assert s["lwf"]["learn_score_delta"] == pytest.approx(0.25)
    lo, hi = s["lwf"]["learn_score_delta_ci95"]
    assert 0 <= lo <= 0.25 <= hi
    assert s["lwf"]["pretrainings"] == 1
    md = markdown(s, [0, 1], None, [])
    assert "ONE pretraining" in md
    assert "| lwf | 0.625" in md and "+0.250" in md


def test_summarize_pairs_each_item_and_seed_with_vanilla():
    """The pairing inside `summarize`: per-item scores that vary a lot between items and seeds,
    with the method exactly 0.1 above vanilla on every item of every seed (0.3 on the D_U NLL).
    Paired on the same item and seed the difference is constant, so the interval has zero width;
    pairing an item with another item or another seed's vanilla would give a wide one."""
    rng = np.random.default_rng(0)
    van, lwf = {"seeds": {}}, {"seeds": {}}
    for s in (0, 1, 2):
        learn, nll = rng.normal(0.5, 0.3, 50), rng.gamma(2.0, 1.0, 40) + s
        for ev, shift in ((van, 0.0), (lwf, 1.0)):
            ev["seeds"][str(s)] = {"learn_score": float(np.mean(learn + 0.1 * shift)), "forget_score": None,
                                   "perplexity": 2.0, "d_u_nll": float(np.mean(nll + 0.3 * shift)),
                                   "items": {"learn": list(learn + 0.1 * shift), "nll/d_u": list(nll + 0.3 * shift)},
                                   "train": {}}
    s = summarize({"vanilla": van, "lwf": lwf}, [0, 1, 2], 400)["lwf"]
    assert s["learn_score_delta"] == pytest.approx(0.1)
    assert s["learn_score_delta_ci95"] == pytest.approx([0.1, 0.1])
    assert s["d_u_nll_delta"] == pytest.approx(0.3) and s["d_u_nll_delta_ci95"] == pytest.approx([0.3, 0.3])


def test_perplexity_bootstrap_resamples_sequences():
    """Point estimate = mean over seeds of exp(sum NLL / sum tokens) differences; identical models
    give a zero-width interval; the interval comes from resampling sequences (many distinct
    replicates even with one seed), and covers the point estimate."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 20, size=100)
    a = rng.gamma(2.0, 1.0, size=(2, 100)) * tokens / 4
    b = a * 0.95
    m, lo, hi = perplexity_bootstrap(a, b, tokens, 500)
    direct = np.mean(np.exp(a.sum(1) / tokens.sum())) - np.mean(np.exp(b.sum(1) / tokens.sum()))
    assert m == pytest.approx(direct) and lo < m < hi and hi - lo > 0
    assert perplexity_bootstrap(a, a, tokens, 200) == (0.0, 0.0, 0.0)
    one = perplexity_bootstrap(a[:1], b[:1], tokens, 300)
    assert one[1] < one[0] < one[2]  # one seed: still an interval, from the sequences


def test_sequence_nlls_in_input_order_whatever_the_batching(tiny, rows):
    """Batches are formed by length; each row's l(x, y) comes back in input order and equals the
    row scored alone."""
    from pipeline.data import collate, encode_rows, forward_loss, sequence_nlls

    model, tok = tiny
    mixed = [dict(r, target=r["target"] * (1 + i % 3)) for i, r in enumerate(rows)]  # mixed lengths
    encs = encode_rows(tok, mixed, 64)
    alone = torch.stack([forward_loss(model, collate([e], tok.pad_token_id))[0][0].double() for e in encs])
    for bs in (1, 4, 64):
        torch.testing.assert_close(sequence_nlls(model, encs, tok.pad_token_id, bs), alone, rtol=1e-5, atol=1e-6)


def test_evaluate_scores_each_nll_sample_once(tiny, rows, monkeypatch):
    """Overlapping NLL sets (D_U within the self-knowledge) are scored once per distinct sample and
    give each set the same numbers as scoring it alone."""
    from pipeline import evaluate
    from pipeline.config import parse_config

    model, tok = tiny
    cfg = parse_config({})
    seen = []
    real = evaluate.set_nlls
    monkeypatch.setattr(evaluate, "set_nlls", lambda m, t, r, *a, **k: seen.append(len(r)) or real(m, t, r, *a, **k))
    monkeypatch.setattr(evaluate, "task_scores", lambda *a, **k: ([1.0], {}))
    sets = {"d_u": rows[:3], "own_d_u": rows[2:5], "self/x": rows}
    forget = {ref.task: [{}] for ref in cfg.data.forget}
    out = evaluate.evaluate_model(model, tok, cfg.data, [{}], forget, rows[:2], cfg.evaluate, nll_sets=sets)
    assert seen == [len(rows)]
    for name, rs in sets.items():
        alone = real(model, tok, rs, cfg.data.max_length, 8)
        assert out["items"][f"nll/{name}"] == pytest.approx(alone, rel=1e-5)


def test_report_says_in_words_when_and_why_the_guard_stopped_unlearning():
    """One sentence per method and seed: where (learning step of how many) and why the guard stopped
    unlearning and how many scheduled unlearning steps were taken, or that all of them were."""
    from pipeline.report import guard_lines, markdown

    reason = "the unlearning step raised the guard rows' NLL from 0.61 to 0.7 (+14.8%, bound +10%)"
    stopped = {"kind": "graceful", "max_rise": 0.1, "max_loss": None, "checks": 9, "largest_rise": 0.148,
               "stopped_at": 37, "reason": reason}
    ran = dict(stopped, stopped_at=None, reason=None, largest_rise=0.02)
    absolute = {"kind": "absolute", "max_rise": None, "max_loss": 6.0, "checks": 0, "largest_rise": None,
                "stopped_at": 0, "reason": "the D_U batch NLL 10.6 is above unlearn_max_loss 6"}
    summary = {"vanilla": {"unlearn_steps_scheduled": [0, 0], "unlearn_steps_taken": [0, 0], "learn_steps": [40, 40],
                           "guard": [None, None]},
               "lwf": {"unlearn_steps_scheduled": [10, 10], "unlearn_steps_taken": [10, 8], "learn_steps": [40, 40],
                       "guard": [ran, stopped]},
               "lwf_abs": {"unlearn_steps_scheduled": [10, 10], "unlearn_steps_taken": [0, 10], "learn_steps": [40, 40],
                           "guard": [absolute, dict(absolute, stopped_at=None, reason=None)]},
               "lwf_low": {"unlearn_steps_scheduled": [5, 5], "unlearn_steps_taken": [5, 5], "learn_steps": [40, 40],
                           "guard": [ran, ran]}}
    lines = guard_lines(summary, [0, 1])
    assert "- lwf: guard `graceful` (stops on a rise of the guard rows' NLL above +10% per step) stopped " \
           "unlearning in 1 of 2 seeds:" in lines
    assert f"  - lwf seed 1: unlearning stopped at learning step 37 of 40: {reason}; 8 of 10 scheduled " \
           "unlearning steps taken." in lines
    assert "  - lwf seed 0: took all 10 scheduled unlearning steps (the largest rise of the guard rows' NLL " \
           "after one was +2.0%, bound +10%)." in lines
    assert "  - lwf_abs seed 0: unlearning stopped at learning step 0 of 40: the D_U batch NLL 10.6 is above " \
           "unlearn_max_loss 6; 0 of 10 scheduled unlearning steps taken." in lines
    assert "  - lwf_abs seed 1: took all 10 scheduled unlearning steps." in lines
    assert any(ln.startswith("- lwf_low:") and "never stopped" in ln for ln in lines)
    assert sum(ln.startswith("  - lwf_low seed ") and "took all 5 scheduled" in ln for ln in lines) == 2
    assert not any("vanilla" in ln for ln in lines)
    text = markdown(summary, [0, 1], None, [])
    assert "| lwf |" in text and "| 10/10, 8/10 |" in text and "Unlearning guard:" in text
    assert "lwf seed 1: unlearning stopped at learning step 37 of 40" in text


def test_guard_sentences_name_the_perplexity_bound_and_the_total():
    """A record of today's guard (perplexity rises, an optional total bound) is worded as such; a record
    of a run before it (the NLL's relative rise) keeps its own wording (test above)."""
    from pipeline.report import guard_lines

    g = {"kind": "graceful", "max_rise": 0.1, "max_total_rise": 0.5, "max_loss": None, "checks": 10,
         "largest_ppl_rise": 0.078, "total_ppl_rise": 0.031, "stopped_at": None, "reason": None}
    summary = {"lwf": {"unlearn_steps_scheduled": [10], "unlearn_steps_taken": [10], "learn_steps": [40], "guard": [g]}}
    lines = guard_lines(summary, [0])
    assert "- lwf: guard `graceful` (stops on a rise of the guard rows' perplexity above +10% per step or +50% over " \
           "all steps) never stopped unlearning:" in lines
    assert "  - lwf seed 0: took all 10 scheduled unlearning steps (the largest rise of the guard rows' perplexity " \
           "after one was +7.8%, bound +10%; all steps together +3.1%)." in lines


def test_summarize_carries_what_the_guard_sentences_need(eval_result):
    """`summarize` keeps per seed the learning steps, the unlearning steps taken and scheduled and the
    guard record (the report's guard sentences read them from metrics/summary.json)."""
    from pipeline.report import guard_lines

    g = {"kind": "graceful", "max_rise": 0.1, "max_loss": None, "checks": 3, "largest_rise": 0.2,
         "stopped_at": 7, "reason": "why"}
    evals = {"vanilla": eval_result({0: [0, 1]}), "lwf": eval_result({0: [1, 1]})}
    evals["lwf"]["seeds"]["0"]["train"] = {"learn_steps": 12, "unlearn_steps_taken": 2, "unlearn_steps_scheduled": 4,
                                           "unlearn_stopped_at": 7, "guard": g}
    s = summarize(evals, [0], 50)
    assert s["lwf"]["learn_steps"] == [12] and s["lwf"]["guard"] == [g]
    assert "  - lwf seed 0: unlearning stopped at learning step 7 of 12: why; 2 of 4 scheduled unlearning steps " \
           "taken." in guard_lines(s, [0])
