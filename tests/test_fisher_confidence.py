"""Fisher and confidence against brute-force references computed with plain autograd."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.confidence import auroc, confidence_scores, select
from pipeline.data import collate, encode_rows, forward_loss
from pipeline.fisher import fisher_and_mean_grad, load_fisher, save_fisher


def brute_grads(model, tok, rows):
    """Per-sample gradients, one sample at a time, with .backward() (independent of pipeline.grads)."""
    out = []
    for e in encode_rows(tok, rows, 48):
        model.zero_grad()
        loss, _ = forward_loss(model, collate([e], tok.pad_token_id))
        loss.sum().backward()
        out.append({n: p.grad.detach().clone().double() for n, p in model.named_parameters()})
    model.zero_grad()
    return out


def test_fisher_equals_brute_force_and_not_batch_mean_square(tiny, rows):
    model, tok = tiny
    F, gL = fisher_and_mean_grad(model, tok, rows, 48, chunk_size=5)
    per = brute_grads(model, tok, rows)
    for n in F:
        ref_f = sum(g[n] ** 2 for g in per) / len(per)
        ref_g = sum(g[n] for g in per) / len(per)
        # float32 sums in another order (threads, batching): entries that nearly cancel (|g_L| ~ 1e-6
        # of a tensor whose largest entry is ~0.1) differ by more than rtol; tolerate 1e-5 of the scale
        assert torch.allclose(F[n].double(), ref_f, rtol=1e-4, atol=1e-5 * float(ref_f.abs().max())), n
        assert torch.allclose(gL[n].double(), ref_g, rtol=1e-4, atol=1e-5 * float(ref_g.abs().max())), n
    # the square of the batch-mean gradient is a different (wrong) quantity
    wrong = {n: gL[n].double() ** 2 for n in F}
    total_f = sum(F[n].double().sum() for n in F)
    total_w = sum(wrong[n].sum() for n in F)
    assert total_w < 0.9 * total_f


def test_fisher_roundtrip(tmp_path, tiny, rows):
    model, tok = tiny
    F, gL = fisher_and_mean_grad(model, tok, rows[:4], 48)
    save_fisher(tmp_path / "f.safetensors", F, gL, {"n_samples": 4})
    F2, g2, meta = load_fisher(tmp_path / "f.safetensors")
    assert meta["n_samples"] == "4" and all(torch.equal(F[n], F2[n]) and torch.equal(gL[n], g2[n]) for n in F)
    # the same Fisher gives the same bytes (safetensors orders a metadata map at random)
    meta = {"n_samples": 4, "kind": "empirical", "loss": "nll", "param_regex": ""}
    blobs = set()
    for i in range(6):
        save_fisher(tmp_path / f"{i}.safetensors", F, gL, meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1


def test_confidence_matches_hand_formula(tiny, rows):
    model, tok = tiny
    F, gL = fisher_and_mean_grad(model, tok, rows, 48)
    samples = [{"prompt": r["prompt"], "target": t} for r, t in zip(rows[:4], [" rome", " oslo", "", " xyz"])]
    df = confidence_scores(model, tok, samples, F, gL, 48, chunk_size=3, seed=3)
    per = brute_grads(model, tok, samples)
    for i, g in enumerate(per):
        fd = sum((F[n].double() * (g[n] - gL[n].double()) ** 2).sum() for n in F)
        fc = -sum((F[n].double() * g[n] * gL[n].double()).sum() for n in F)
        dot = sum((g[n] * gL[n].double()).sum() for n in F)
        cos = dot / (torch.sqrt(sum((g[n] ** 2).sum() for n in F)) * torch.sqrt(sum((gL[n].double() ** 2).sum() for n in F)))
        assert df.loc[i, "score_fisher_distance"] == pytest.approx(float(fd), rel=1e-4)
        assert df.loc[i, "score_fisher_conflict"] == pytest.approx(float(fc), rel=1e-4, abs=1e-12)
        assert df.loc[i, "score_cosine"] == pytest.approx(float(-cos), rel=1e-4, abs=1e-9)
    assert np.allclose(df["score_random"], np.random.default_rng(3).random(4))


def test_probe_and_loss_rise_match_a_separate_probe_run(tiny, rows):
    """score_probe = eta^2/2 sum F g_s^2 + eta sum F g_s Delta_probe and score_loss_rise =
    l(s; theta_probe) - l(s; theta_0), with theta_probe from an independent run of the same plain
    fine-tune; the model is back at theta_0 afterwards, bit for bit."""
    import copy

    from pipeline.config import FinetuneConfig, MethodConfig, ProbeConfig
    from pipeline.train import finetune

    model, tok = tiny
    theta0 = copy.deepcopy(model.state_dict())
    F, gL = fisher_and_mean_grad(model, tok, rows, 48)
    samples = [{"prompt": r["prompt"], "target": t} for r, t in zip(rows[:4], [" rome", " oslo", "", " xyz"])]
    probe = ProbeConfig(steps=3, lr=1e-2, batch_size=4, seed=5)
    df = confidence_scores(model, tok, samples, F, gL, 48, chunk_size=3, learn_rows=rows, probe=probe)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in theta0.items())

    moved = copy.deepcopy(model)
    finetune(moved, tok, rows, [], FinetuneConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0), MethodConfig(),
             5, 48)
    delta = {n: p.detach().double() - dict(model.named_parameters())[n].detach().double()
             for n, p in moved.named_parameters()}
    batch = collate(encode_rows(tok, samples, 48), tok.pad_token_id)
    with torch.no_grad():
        rise = (forward_loss(moved.eval(), batch)[0] - forward_loss(model, batch)[0]).double()
    for i, g in enumerate(brute_grads(model, tok, samples)):
        ref = sum((F[n].double() * (0.5 * 1e-4 * g[n] ** 2 + 1e-2 * g[n] * delta[n])).sum() for n in F)
        assert df.loc[i, "score_probe"] == pytest.approx(float(ref), rel=1e-4)
        assert df.loc[i, "score_loss_rise"] == pytest.approx(float(rise[i]), rel=1e-4, abs=1e-6)


def test_oracle_draws_only_from_the_positive_tasks():
    df = select(_table(), "fisher_distance", 0.25, False, seed=0, positive=["b"])
    assert df["selected_oracle"].sum() == 10 and (df.loc[df.selected_oracle, "forget_task"] == "b").all()
    few = select(_table(8), "fisher_distance", 1.0, False, seed=0, positive=["b"])
    assert few["selected_oracle"].sum() == 4  # fewer positives than the selection: all of them


def _table(n=40):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"forget_task": ["a"] * (n // 2) + ["b"] * (n // 2),
                         **{f"score_{k}": rng.normal(size=n) for k in ("fisher_distance", "cosine", "optimum_distance")}})


@pytest.mark.parametrize("per_task", [False, True])
def test_selections_same_size_and_disjoint(per_task):
    df = select(_table(), "fisher_distance", 0.25, per_task, seed=0)
    k = df["selected"].sum()
    assert k == 10
    for col in ("selected_low", "selected_random", "selected_cosine", "selected_published"):
        assert df[col].sum() == k
    assert df.equals(select(df, "fisher_distance", 0.25, per_task, seed=0))
    published = select(df.drop(columns=[c for c in df if c.startswith("selected")]), "optimum_distance", 0.25,
                       per_task, seed=0)["selected"]
    assert (df["selected_published"] == published).all()  # lwf_published = lwf under confidence.score optimum_distance
    unscored = select(_table().assign(score_optimum_distance=np.nan), "fisher_distance", 0.25, per_task, seed=0)
    assert not unscored["selected_published"].any()  # no published score computed: an empty D_U, refused by the loop
    assert not (df["selected"] & df["selected_low"]).any()
    top = df.sort_values("confidence", ascending=False)
    if not per_task:
        assert top["selected"].iloc[:10].all() and not top["selected"].iloc[10:].any()
        assert list(df.sort_values("rank")["confidence"]) == sorted(df["confidence"], reverse=True)
    else:
        assert (df.groupby("forget_task")["selected"].sum() == 5).all()


def test_confidence_metrics_put_answer_length_beside_the_scores():
    """A table whose conflicting answers are the long ones: n_tokens alone separates them (AUROC 1),
    the baseline a score has to beat to show it sees more than length."""
    from pipeline.config import SCORES, SELECTIONS, ConfidenceConfig
    from pipeline.confidence import confidence_metrics

    n = 8
    df = pd.DataFrame({"forget_task": ["lab_conflict"] * n + ["lab_neutral"] * n,
                       "n_tokens": list(range(20, 20 + n)) + list(range(n)), "grad_norm": [1.0] * (2 * n),
                       "confidence": np.linspace(0, 1, 2 * n), "nll_base": [1.0] * (2 * n),
                       **{f"score_{s}": np.linspace(0, 1, 2 * n)[::-1] for s in SCORES},
                       **{col: [True, False] * n for col in SELECTIONS.values()}})
    m = confidence_metrics(df, ConfidenceConfig())
    assert m["auroc"]["n_tokens"] == 1.0 and m["auroc"]["grad_norm"] == 0.5 and m["auroc"]["cosine"] == 1.0
    assert m["auroc_by_negative"]["lab_neutral"]["n_tokens"] == 1.0


def test_auroc_known_cases():
    assert auroc([3, 4, 1, 2], [True, True, False, False]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
