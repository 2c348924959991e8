"""What the confidence scores pick on a real model: `dvc repro confidence` (prepare, base_model,
optimum, fisher, elicit, confidence: no fine-tune) of a preset in a copy of this project, then,
for the default score and every other score, the most and least confident samples as text, the
Spearman correlation with the answer length (n_tokens), and the share of answers the base model
got wrong (`correct` < 1) in D_U (the top `confidence.forget_fraction`) vs in all of D_self.

    python experiments/real_confidence/real_confidence.py OUT_DIR [--preset presets/smollm2_cpu.yaml] [--threads 1] \
        [--top 5] [--set key=value ...] [--log FILE]
    python experiments/real_confidence/real_confidence.py RUN_DIR --no-repro [--top 4] [--log FILE]

Prints each stage's wall time (from `dvc repro` and metrics/*.json) and the machine. `--no-repro`
reads a finished project's own params.yaml and confidence table instead (a run of the full
pipeline, e.g. a preset's `dvc repro`); the text tables are those of its `confidence.score`, then
of `optimum_distance` and `fisher_distance`.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import ROOT, apply_overrides, log_to, machine, project_copy, sh, table  # noqa: E402

SCORES = ["optimum_distance", "fisher_distance", "fisher_conflict", "cosine", "probe", "loss_rise", "random"]


def spearman(a, b) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def short(text: str, n: int = 110) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def repro(proj: Path, a) -> dict:
    """`dvc repro confidence` of the preset (+ --set) in a project copy at `proj`; its params."""
    project_copy(proj, a.threads)  # today's code, every time
    from pipeline.config import read_params
    from pipeline.presets import params_text

    raw = apply_overrides(read_params(ROOT / a.preset), a.set)  # the preset's differences, then --set
    (proj / "params.yaml").write_text(params_text(str(ROOT / a.preset), raw)[1])  # the full params.yaml
    t0 = time.time()
    log = sh([sys.executable, "-m", "dvc", "repro", "confidence"], proj, a.threads)
    (proj / "repro.log").write_text(log)
    wall = time.time() - t0
    done = [line.split(": done in ")[0].split("stage ")[-1] + " " + line.split(": done in ")[1]
            for line in log.splitlines() if ": done in " in line]
    print(f"machine: {machine()}; stages ran with {a.threads} thread(s); params: {a.preset}"
          + (f" + {' '.join(a.set)}" if a.set else ""))
    print(f"dvc repro confidence: {wall / 60:.1f} min wall; per stage: {', '.join(done) or 'all cached'}")
    return raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--preset", default="presets/smollm2_cpu.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], help="params overrides, key=value (YAML value)")
    ap.add_argument("--no-repro", action="store_true", help="OUT is a finished project: read it, run nothing")
    ap.add_argument("--log", help="also write the printout to this file")
    a = ap.parse_args()
    with log_to(a.log):
        study(a)


def study(a):
    """The confidence tables of the run `main` parsed arguments for (printed, and kept by `--log`)."""
    proj = Path(a.out).resolve()
    if a.no_repro:
        from pipeline.config import read_params

        raw = read_params(proj / "params.yaml")
        print(f"the finished run in {proj.name}: model {raw['model']['name']}")
    else:
        raw = repro(proj, a)
    df = pd.read_parquet(proj / "artifacts/confidence.parquet")
    c = raw["confidence"]
    k = int(df["selected"].sum())
    wrong = df["correct"] < 1
    rows = []
    for sc in SCORES:
        col = df[f"score_{sc}"]
        if col.isna().all():
            continue
        top = col.sort_values(ascending=False, kind="mergesort").index[:k]
        rows.append([sc + (" (default)" if sc == c["score"] else ""), f"{spearman(col, df['n_tokens']):+.2f}",
                     f"{spearman(col, df['grad_norm']):+.2f}", f"{wrong[top].mean():.3f}",
                     f"{df.loc[top, 'n_tokens'].mean():.1f}"])
    rows.append(["grad_norm", f"{spearman(df['grad_norm'], df['n_tokens']):+.2f}", "+1.00",
                 f"{wrong[df['grad_norm'].sort_values(ascending=False).index[:k]].mean():.3f}", "—"])
    table(f"{len(df)} self-generated samples, D_U = top {k} ({c['forget_fraction']:g}) by each score; all of D_self: "
          f"wrong share {wrong.mean():.3f}, mean n_tokens {df['n_tokens'].mean():.1f}",
          ["score", "Spearman with n_tokens", "Spearman with grad_norm", "share wrong in D_U", "mean n_tokens in D_U"],
          rows)
    for sc in dict.fromkeys([c["score"], "optimum_distance", "fisher_distance"]):
        if df[f"score_{sc}"].isna().all():
            continue
        order = df.sort_values(f"score_{sc}", ascending=False, kind="mergesort")
        for label, part in ((f"most confident {a.top}", order.head(a.top)), (f"least confident {a.top}",
                                                                           order.tail(a.top).iloc[::-1])):
            table(f"{sc}: {label}", ["rank", "score", "n_tokens", "correct", "prompt (end)", "response"],
                  [[int((order.index.get_loc(i)) + 1), f"{r[f'score_{sc}']:.4g}", int(r["n_tokens"]),
                    r["correct"], short(r["prompt"][-90:], 90), short(r["response"])] for i, r in part.iterrows()])
    q, d = df["opt_quadratic"], df["opt_directional"]
    alpha = c["alpha"]
    print(f"\nmedian 1/2 sum F_L g^2 = {q.median():.3g}, median |sum F_L g Delta_L| = {d.abs().median():.3g}; "
          f"balance alpha = {d.abs().median() / q.median():.3g} (default alpha {alpha:g}); Spearman of the score with "
          f"its directional part {spearman(df['score_optimum_distance'], d):+.2f}, with its quadratic part "
          f"{spearman(df['score_optimum_distance'], q):+.2f}")


if __name__ == "__main__":
    main()
