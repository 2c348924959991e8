"""Is there negative transfer to remove? Vanilla fine-tuning of SmolLM2 on SST-5 whose label words
contradict what the model knows (`--labels` reversed: a very positive review is answered "very
negative") against the same task with label words it has no prior for (nonce words: the control),
at the same budget, seeds and rows, on SST-5's VALIDATION split. Negative transfer = the control
above the conflicting task, with its paired interval above 0.

Reads the `--json` files of `experiments/learning_curve/learning_curve.py` (one per label set, the
same seeds, steps and validation rows) and prints, per scored step, each set's accuracy (mean over
seeds, per seed) and the paired difference control - conflict with a bootstrap 95% interval over
seeds and rows (pipeline.report.paired_bootstrap, the report's own).

    python experiments/positive_control/negative_transfer.py --conflict docs/results/positive_control/vanilla_reversed.json \
        --control docs/results/positive_control/vanilla_nonce.json [--reference docs/results/positive_control/vanilla_canonical.json]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import table  # noqa: E402
from pipeline.report import paired_bootstrap  # noqa: E402


def load(path: str) -> dict:
    d = json.loads(Path(path).read_text())
    if not d.get("items"):
        raise SystemExit(f"{path}: no per-row scores (rerun learning_curve.py, which now saves them)")
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conflict", required=True, help="learning_curve.py --json of the conflicting label words")
    ap.add_argument("--control", required=True, help="... of the label words without a prior")
    ap.add_argument("--reference", help="... of the task's own label words (optional: how much the prior helps)")
    ap.add_argument("--n-boot", type=int, default=2000)
    a = ap.parse_args(argv)
    runs = {"conflict": load(a.conflict), "control": load(a.control)}
    if a.reference:
        runs["reference"] = load(a.reference)
    keys = {k: set(d["items"]) for k, d in runs.items()}
    steps = sorted(set.intersection(*keys.values()), key=int)
    shapes = {k: {s: np.array(d["items"][s]).shape for s in steps} for k, d in runs.items()}
    if len({tuple(v.items()) for v in shapes.values()}) != 1:
        raise SystemExit(f"the runs differ in seeds or rows: {shapes}")
    rows = []
    for s in steps:
        acc = {k: np.array(d["items"][s]) for k, d in runs.items()}  # (seeds, rows)
        diff = acc["control"] - acc["conflict"]
        m, lo, hi = paired_bootstrap(diff, a.n_boot)
        per_seed = diff.mean(axis=1)
        rows.append([s, *[f"{acc[k].mean():.3f} ({', '.join(f'{x:.3f}' for x in acc[k].mean(axis=1))})" for k in runs],
                     f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" (noise)" if lo <= 0 <= hi else ""),
                     f"{int((per_seed > 0).sum())} of {len(per_seed)}"])
    words = {k: ", ".join(d.get("labels", [])) for k, d in runs.items()}
    d0 = runs["conflict"]
    table(f"vanilla on SST-5 validation ({d0['n_val']} rows), {len(np.array(d0['items'][steps[0]]))} seeds, "
          f"{d0['n_train']} learning rows, lr {d0['lr']} ({d0['lr_schedule']}), trainable {d0['trainable']}, scoring "
          f"{d0['scoring']}; label words: " + "; ".join(f"{k}: {w}" for k, w in words.items()),
          ["learning steps", *[f"{k} acc (per seed)" for k in runs], "control - conflict [95% CI]",
           "seeds control above"], rows)


if __name__ == "__main__":
    main()
