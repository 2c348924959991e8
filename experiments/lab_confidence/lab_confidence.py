"""The confidence scores over lab pretrainings, stages up to `confidence` only (much cheaper than
`lab_robustness.py`, which runs the whole pipeline): per lab seed (`model.lab.seed`) one copy of
this project, `dvc repro confidence` (prepare, base_model, optimum, fisher, elicit, confidence),
for each `fisher.at` asked for. Prints the AUROC of every score (conflicting vs neutral
self-knowledge, `confidence.auroc_positive` vs `auroc_negative`, 95% interval from resampling
samples within each class) per run, their mean / sd over the runs, and the published score's
AUROC along `confidence.alpha` (read off the table's opt_quadratic / opt_directional columns, no
rerun) with its two limits.

    python experiments/lab_confidence/lab_confidence.py OUT_DIR [--lab-seeds 0 1 2 3 4] [--at target base] \
        [--threads 1] [--alphas 1e-5 1e-4 3e-4 1e-3 1e-2 1e-1 1] [--set key=value ...]

OUT_DIR keeps every project (DVC reruns only what changed).
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import ROOT, apply_overrides, auroc_ci, machine, project_copy, setdeep, sh, table  # noqa: E402

from pipeline.confidence import auroc  # noqa: E402


def project(out: Path, lab_seed: int, at: str, threads: int, overrides: list[str]) -> Path:
    """`dvc repro confidence` in OUT/lab<seed>; returns the saved confidence table of this `fisher.at`."""
    proj = out / f"lab{lab_seed}"
    project_copy(proj, threads)  # today's code, every time
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    setdeep(raw, "model.lab.seed", lab_seed)
    setdeep(raw, "fisher.at", at)
    apply_overrides(raw, overrides)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"lab seed {lab_seed}, fisher.at {at}: dvc repro confidence", file=sys.stderr, flush=True)
    sh([sys.executable, "-m", "dvc", "repro", "confidence"], proj, threads)
    saved = proj / f"confidence-at-{at}.parquet"
    shutil.copy(proj / "artifacts/confidence.parquet", saved)
    (proj / f"optimum-at-{at}.json").write_text((proj / "metrics/optimum.json").read_text())
    return saved


def paired_diff(df, pos, neg, a: str, b: str, n_boot: int = 1000) -> list[str]:
    """AUROC(a) − AUROC(b) with a 95% paired bootstrap interval and its side of 0 (+ / 0 / −)."""
    df = df[df["forget_task"].isin(list(pos) + list(neg))]
    y = df["forget_task"].isin(list(pos)).to_numpy()
    va, vb = df[f"score_{a}"].to_numpy(), df[f"score_{b}"].to_numpy()
    p, n = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n_boot):
        i = np.concatenate([rng.choice(p, len(p)), rng.choice(n, len(n))])
        boots.append(auroc(va[i], y[i]) - auroc(vb[i], y[i]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    d = auroc(va, y) - auroc(vb, y)
    return [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]", "+" if lo > 0 else "-" if hi < 0 else "0 (noise)"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lab-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--at", nargs="+", default=["target", "base"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1e-5, 1e-4, 3e-4, 1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--set", nargs="*", default=[], help="extra params overrides, key=value (YAML value)")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    pos, neg = raw["confidence"]["auroc_positive"], raw["confidence"]["auroc_negative"]
    tables = {(s, at): pd.read_parquet(project(out, s, at, a.threads, a.set)) for at in a.at for s in a.lab_seeds}
    print(f"machine: {machine()} (stages ran with {a.threads} thread(s)); params.yaml + model.lab.seed, fisher.at"
          + (f", {' '.join(a.set)}" if a.set else ""))
    for at in a.at:
        cis = {s: auroc_ci(tables[s, at], pos, neg) for s in a.lab_seeds}
        scores = list(cis[a.lab_seeds[0]])
        rows = [[s, *[f"{cis[s][sc][0]:.3f} [{cis[s][sc][1]:.2f}, {cis[s][sc][2]:.2f}]" for sc in scores]]
                for s in a.lab_seeds]
        pts = {sc: np.array([cis[s][sc][0] for s in a.lab_seeds]) for sc in scores}
        rows.append(["mean ± sd", *[f"{pts[sc].mean():.3f} ± {pts[sc].std(ddof=1) if len(pts[sc]) > 1 else 0:.3f}"
                                    for sc in scores]])
        rows.append(["runs above / noise / below 0.5", *[
            " / ".join(str(sum((cis[s][sc][1] > 0.5) if x == "+" else (cis[s][sc][2] < 0.5) if x == "-" else
                               (cis[s][sc][1] <= 0.5 <= cis[s][sc][2]) for s in a.lab_seeds)) for x in "+0-")
            for sc in scores]])
        table(f"fisher.at = {at}: confidence AUROC [95% interval over samples], {', '.join(pos)} vs "
              f"{', '.join(neg)} (0.5 = chance), lab seeds {a.lab_seeds}", ["lab seed", *scores], rows)

        rows = [[s, *paired_diff(tables[s, at], pos, neg, "optimum_distance", other)] for s in a.lab_seeds
                for other in ["fisher_distance"]]
        table(f"fisher.at = {at}: AUROC optimum_distance − fisher_distance per run [95% interval, samples resampled "
              "within each class, the same resamples for both scores]", ["lab seed", "difference", "side"], rows)

        alpha = raw["confidence"]["alpha"]
        hdr = ["lab seed", "directional only (alpha -> 0)", *[f"alpha {x:g}" for x in a.alphas],
               "quadratic only (alpha -> inf)"]
        rows = []
        for s in a.lab_seeds:
            df = tables[s, at]
            df = df[df["forget_task"].isin(pos + neg)]
            y = df["forget_task"].isin(pos).to_numpy()
            q, d = df["opt_quadratic"].to_numpy(), df["opt_directional"].to_numpy()
            rows.append([s, f"{auroc(d, y):.3f}", *[f"{auroc(x * x * q + x * d, y):.3f}" for x in a.alphas],
                         f"{auroc(q, y):.3f}"])
        table(f"fisher.at = {at}: AUROC of optimum_distance along alpha (default {alpha:g}; the same tables)", hdr, rows)
        rows = []
        for s in a.lab_seeds:
            df = tables[s, at]
            q, d = df["opt_quadratic"].abs(), df["opt_directional"].abs()
            opt = json.loads((out / f"lab{s}" / f"optimum-at-{at}.json").read_text())
            rows.append([s, f"{opt['first_loss']:.3f} → {opt['last_loss']:.3f}", f"{opt['delta_norm']:.3g}",
                         f"{q.median():.3g}", f"{d.median():.3g}", f"{d.median() / max(q.median(), 1e-300):.3g}"])
        table(f"fisher.at = {at}: theta*_L and the two terms (medians over D_self); alpha at which alpha^2 * quadratic "
              "= alpha * directional (median)", ["lab seed", "learning loss (optimum stage)", "|Delta_L|",
                                                 "median 1/2 sum F_L g^2", "median |sum F_L g Delta_L|",
                                                 "balance alpha"], rows)


if __name__ == "__main__":
    main()
