"""The published confidence with sound estimates (README.md here: question, rule, result).

    python experiments/published_confidence/published_confidence.py PROJECT --out DIR [--n-val 200] [--max-steps 300]
        [--eval-every 10] [--patience 5] [--split-seed 0]

PROJECT: a lab project after `dvc repro confidence` (artifacts/base_model, data/learn,
artifacts/self_knowledge.parquet, artifacts/confidence.parquet, params.yaml). In one process:
theta*_L early-stopped on lab_learn's validation split (pipeline.optimum.optimum_delta), F_L at
theta_base / at theta*_L over the training rows / at theta*_L over the validation rows
(pipeline.fisher.fisher_and_mean_grad), the per-sample gradients of D_self at theta_base once
(pipeline.grads.iter_per_sample_grads), the published score for every (fisher.at, alpha) of the
grid, the other scores from the project's confidence table; AUROC on the validation and test
halves of D_self; the README's rule applied; writes DIR/choice.json, DIR/auroc.csv, DIR/summary.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.confidence import as_rows, auroc  # noqa: E402
from pipeline.data import encode_rows  # noqa: E402
from pipeline.fisher import fisher_and_mean_grad  # noqa: E402
from pipeline.grads import iter_per_sample_grads, select_params  # noqa: E402
from pipeline.models import load_model, trainable_model  # noqa: E402
from pipeline.optimum import optimum_delta, validation_rows  # noqa: E402
from pipeline.stage import load_rows  # noqa: E402

ATS = ("heldout", "target", "base")  # the rule's tie order
ALPHAS = [float(f"{m}e{e}") for e in range(-6, 2) for m in (1, 3)]
OTHERS = ("cosine", "loss_rise", "fisher_distance", "fisher_conflict", "probe")  # the rule's tie order
POS, NEG = ["lab_conflict"], ["lab_neutral", "lab_count"]


def halves(df: pd.DataFrame, seed: int) -> np.ndarray:
    """True = validation half: per forgetting task, the first half of a seeded permutation."""
    val = np.zeros(len(df), dtype=bool)
    rng = np.random.default_rng(seed)
    for _, g in df.groupby("forget_task", sort=True):
        idx = rng.permutation(g.index.to_numpy())
        val[idx[: len(idx) // 2]] = True
    return val


def auc_ci(score, y, n_boot=1000, seed=0):
    score, y = np.asarray(score, float), np.asarray(y, bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    b = []
    for _ in range(n_boot):
        i = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        b.append(auroc(score[i], y[i]))
    return auroc(score, y), *np.percentile(b, [2.5, 97.5])


def du_share(df: pd.DataFrame, score, fraction: float) -> float:
    """Share of conflicting samples in D_U = the top `fraction` of D_self by `score` (ties: row order)."""
    k = max(1, int(round(fraction * len(df))))
    order = pd.Series(np.asarray(score, float)).sort_values(ascending=False, kind="mergesort").index[:k]
    return float(df.loc[order, "forget_task"].isin(POS).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("project")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--split-seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    proj, out = Path(a.project).resolve(), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(proj / "params.yaml")
    o = cfg.optimum.model_copy(update={"steps": a.max_steps, "n_validation": a.n_val, "eval_every": a.eval_every,
                                       "patience": a.patience})
    t0 = time.time()
    base, tok = load_model(proj / "artifacts/base_model", cfg.model)
    base = trainable_model(base, cfg.model)
    selected = list(select_params(base, cfg.grads.param_regex, cfg.grads.embeddings))
    learn = load_rows(proj / "data/learn", "train")
    val = validation_rows(cfg.data.learn, a.n_val, cfg.data.seed)
    ml, bos = cfg.data.max_length, cfg.model.add_bos
    gargs = (ml, cfg.grads.engine, cfg.grads.chunk_size, cfg.grads.param_regex, bos, cfg.grads.embeddings)

    # theta*_L, early-stopped on the validation split
    star, _ = load_model(proj / "artifacts/base_model", cfg.model)
    star = trainable_model(star, cfg.model)
    delta, theta, ostats = optimum_delta(star, tok, learn, o, ml, bos, selected, val)
    print(f"theta*_L: best step {ostats['best_step']} of {ostats['steps_run']} run, validation NLL "
          f"{ostats['val_nll_base']:.4f} -> {ostats['val_nll_best']:.4f}, |Delta_L| {ostats['delta_norm']:.3f}", flush=True)

    # the three Fishers
    fishers = {"base": fisher_and_mean_grad(base, tok, learn[: cfg.fisher.n_samples], *gargs)[0]}
    fishers["target"] = fisher_and_mean_grad(star, tok, learn[: cfg.fisher.n_samples], *gargs)[0]
    fishers["heldout"] = fisher_and_mean_grad(star, tok, val, *gargs)[0]
    traces = {k: sum(float(v.double().sum()) for v in F.values()) for k, F in fishers.items()}
    print("Fisher traces:", {k: f"{v:.3g}" for k, v in traces.items()}, flush=True)

    # per-sample sums at theta_base, one pass: quad_at = 1/2 sum F_at g^2, dir_at = sum F_at g Delta_L
    sk = pd.read_parquet(proj / "artifacts/self_knowledge.parquet").reset_index(drop=True)
    conf = pd.read_parquet(proj / "artifacts/confidence.parquet").set_index("sample_id").loc[sk["sample_id"]]
    encs = encode_rows(tok, as_rows(sk), ml, bos)
    F = {at: {n: v.double().flatten() for n, v in f.items()} for at, f in fishers.items()}
    D = {n: d.double().flatten() for n, d in delta.items()}
    quad = {at: np.zeros(len(encs)) for at in ATS}
    direc = {at: np.zeros(len(encs)) for at in ATS}
    for idx, grads in iter_per_sample_grads(base, encs, tok.pad_token_id, cfg.grads.engine, cfg.grads.chunk_size,
                                            cfg.grads.param_regex, None, cfg.grads.embeddings):
        i = idx.numpy()
        for n, g in grads.items():
            g = g.double().flatten(1)
            for at in ATS:
                quad[at][i] += 0.5 * ((g * g) @ F[at][n]).numpy()
                direc[at][i] += (g @ (F[at][n] * D[n])).numpy()
    const = {at: 0.5 * sum(float((F[at][n] * D[n] ** 2).sum()) for n in D) for at in ATS}

    isval = halves(sk, a.split_seed)
    y = sk["forget_task"].isin(POS).to_numpy()
    keep = sk["forget_task"].isin(POS + NEG).to_numpy()
    rows, scores = [], {}
    for at in ATS:
        for alpha in ALPHAS:
            s = alpha ** 2 * quad[at] + alpha * direc[at] + const[at]
            scores[("optimum_distance", at, alpha)] = s
    for name in OTHERS + ("random",):
        scores[(name, "", 0.0)] = conf[f"score_{name}"].to_numpy()
    scores[("optimum_distance_shipped", "", 0.0)] = conf["score_optimum_distance"].to_numpy()
    for (name, at, alpha), s in scores.items():
        v = auroc(s[isval & keep], y[isval & keep])
        t, lo, hi = auc_ci(s[~isval & keep], y[~isval & keep])
        part = s - (const[at] if at else 0.0)
        rows.append({"score": name, "at": at, "alpha": alpha, "val_auroc": v, "test_auroc": t, "test_lo": lo,
                     "test_hi": hi, "all_auroc": auroc(s[keep], y[keep]),
                     "du_conflict_share": du_share(sk, s, cfg.confidence.forget_fraction),
                     "sample_share_abs_median": float(np.median(np.abs(part / s))) if at else float("nan")})
    tab = pd.DataFrame(rows)
    tab.to_csv(out / "auroc.csv", index=False)

    # the rule (README): step 1, the published form's settings
    pub = tab[tab["score"] == "optimum_distance"].copy()
    pub["at_rank"] = pub["at"].map({at: i for i, at in enumerate(ATS)})
    best_v = pub["val_auroc"].max()
    cand = pub[pub["val_auroc"] >= best_v - 0.001].sort_values(["at_rank", "alpha"])
    chosen = cand.iloc[0]
    # step 2, the default score
    if chosen["val_auroc"] >= 0.90:
        default = "optimum_distance"
    else:
        order = list(OTHERS) + ["optimum_distance"]
        vals = {n: float(tab[(tab["score"] == n)]["val_auroc"].iloc[0]) for n in OTHERS}
        vals["optimum_distance"] = float(chosen["val_auroc"])
        top = max(vals.values())
        default = next(n for n in order if vals[n] >= top - 0.005)
    choice = {"published": {"fisher.at": chosen["at"], "confidence.alpha": chosen["alpha"],
                            "val_auroc": chosen["val_auroc"], "test_auroc": chosen["test_auroc"]},
              "default_score": default, "optimum": {k: v for k, v in ostats.items() if k != "val_curve"},
              "val_curve": ostats["val_curve"], "fisher_trace": traces, "constant": const,
              "n_validation_half": int((isval & keep).sum()), "n_test_half": int((~isval & keep).sum()),
              "seconds": round(time.time() - t0, 1)}
    (out / "choice.json").write_text(json.dumps(choice, indent=2, default=float) + "\n")

    # summary
    lines = [f"project {proj.name}; theta*_L best step {ostats['best_step']} (of {ostats['steps_run']} run, max "
             f"{a.max_steps}), validation NLL {ostats['val_nll_base']:.4f} -> {ostats['val_nll_best']:.4f}",
             "Fisher trace: " + ", ".join(f"{k} {v:.3g}" for k, v in traces.items()), "",
             "| score | fisher.at | alpha | val AUROC | test AUROC [95%] | all | conflict share of D_U | median abs sample share |",
             "|---|---|---|---|---|---|---|---|"]
    show = [r for _, r in tab.iterrows() if r["score"] != "optimum_distance"]
    for at in ATS:
        sub = pub[pub["at"] == at]
        show.append(sub.loc[sub["val_auroc"].idxmax()])
        for alpha in (3e-4, 1e-2, 1.0):
            show.append(sub[np.isclose(sub["alpha"], alpha)].iloc[0])
    for r in show:
        lines.append(f"| {r['score']} | {r['at'] or '-'} | {r['alpha'] if r['at'] else '-'} | {r['val_auroc']:.3f} | "
                     f"{r['test_auroc']:.3f} [{r['test_lo']:.2f}, {r['test_hi']:.2f}] | {r['all_auroc']:.3f} | "
                     f"{r['du_conflict_share']:.3f} | {r['sample_share_abs_median']:.3g} |")
    lines += ["", f"rule: published form = fisher.at {chosen['at']}, alpha {chosen['alpha']:g} (val AUROC "
              f"{chosen['val_auroc']:.3f}); default score = {default}"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
