"""Aggregate several complete runs of the pipeline (e.g. one per lab pretraining seed, made with
`dvc exp run -S model.lab.seed=N` or separate checkouts) into one table: per method the learning
score averaged over fine-tuning seeds, per run, and mean ± std over runs; confidence AUROCs;
how well the base model holds the conflicting knowledge.

    python experiments/aggregate_runs.py RUN_DIR [RUN_DIR ...]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository: experiments._common
from experiments._common import table  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="project directories after a complete `dvc repro`")
    runs = [Path(d) for d in ap.parse_args(argv).runs]
    summ = [json.loads((r / "metrics/summary.json").read_text()) for r in runs]
    conf = [json.loads((r / "metrics/confidence.json").read_text()) for r in runs]
    eli = [json.loads((r / "metrics/elicit.json").read_text()) for r in runs]
    methods = [m for m in summ[0] if all(m in s for s in summ)]
    rows = []
    for m in methods:
        per = [s[m]["learn_score"] for s in summ]
        deltas = [s[m].get("learn_score_delta", 0.0) for s in summ]
        wins = sum(1 for s in summ if s[m].get("learn_score_delta_ci95", [0, 0])[0] > 0)
        losses = sum(1 for s in summ if s[m].get("learn_score_delta_ci95", [0, 0])[1] < 0)
        rows.append([m, *[f"{x:.3f}" for x in per], f"{np.mean(per):.3f} ± {np.std(per, ddof=1):.3f}",
                     f"{np.mean(deltas):+.3f}" if m != "vanilla" else "—",
                     f"{wins} / {losses}" if m != "vanilla" else "—"])
    table("Learning score on the test split (mean over fine-tuning seeds) per run, and over runs",
          ["method", *[r.name for r in runs], "mean ± std over runs", "mean Δ vs vanilla",
           "runs with CI > 0 / < 0"], rows)
    scores = list(conf[0]["auroc"])
    rows = [[s, *[f"{c['auroc'][s]:.3f}" for c in conf], f"{np.mean([c['auroc'][s] for c in conf]):.3f}"] for s in scores]
    table("Confidence AUROC, conflicting vs neutral self-knowledge", ["score", *[r.name for r in runs], "mean"], rows)
    tasks = list(eli[0])
    rows = [[t, *[f"{e[t]['agreement_with_gold']:.3f}" for e in eli]] for t in tasks]
    table("Base model's self-knowledge: agreement with each task's rule", ["forgetting task", *[r.name for r in runs]], rows)
    rows = [[m, *[f"{s[m].get('forget_scores', {}).get(t, float('nan')):.3f}" for s in summ for t in tasks]]
            for m in methods]
    table("Forgetting-task scores after fine-tuning (mean over seeds)",
          ["method", *[f"{r.name}:{t}" for r in runs for t in tasks]], rows)


if __name__ == "__main__":
    main()
