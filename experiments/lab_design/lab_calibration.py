"""Calibrating the embedded lab's step budget on the VALIDATION split (never the test split):
learning-task accuracy along one long fine-tuning run per (method, seed), read at several step
counts, for the base model under `vanilla`, `lwf_random` and `lwf_oracle` (periodic unlearning of
the confidence table's selections) and for the control base model (pretrained as the `control`
stage does, `control.corpus`) under `vanilla`. With the lab's constant learning rate after warmup,
the state after step s of a long run is the state a run with `max_steps: s` ends in.

    python experiments/lab_design/lab_calibration.py [--project DIR] [--at 20 30 35 40 50 60 80] [--seeds 0 1 2]

Uses DIR/artifacts/base_model and DIR/artifacts/confidence.parquet (run `dvc repro confidence`
first) and pretrains the control itself. Prints mean accuracy per method and step count, and the
paired 95% intervals (fine-tuning seeds and validation items resampled) of control − vanilla
(negative transfer), oracle − vanilla and oracle − random.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import interval, machine, table  # noqa: E402

from pipeline.confidence import unlearn_set  # noqa: E402
from pipeline.config import MethodConfig, load_config  # noqa: E402
from pipeline.evaluate import task_scores  # noqa: E402
from pipeline.lab import control_lab, pretrain_lab  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.report import paired_bootstrap  # noqa: E402
from pipeline.tasks import get_task, prepared_rows  # noqa: E402
from pipeline.callbacks import OnLearnStep  # noqa: E402
from pipeline.train import finetune  # noqa: E402


def curve(model, tok, cfg, at: list[int], seed, learn, val, d_u=(), method=MethodConfig()) -> dict[int, np.ndarray]:
    """Per-item validation correctness after each learning step in `at`, along one run of max(at) steps."""
    base = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}

    def cb(step):
        if step in at:
            out[step] = np.asarray(task_scores(model, tok, "lab_learn", val, 8, 100)[0])
            model.train()

    finetune(model, tok, learn, list(d_u), cfg.finetune.model_copy(update={"max_steps": max(at)}), method, seed,
             cfg.data.max_length, callbacks=[OnLearnStep(lambda _model, step: cb(step))])
    model.load_state_dict(base)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=".", help="a project after `dvc repro confidence`")
    ap.add_argument("--at", type=int, nargs="+", default=[20, 30, 35, 40, 50, 60, 80])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    proj = Path(a.project)
    cfg = load_config(proj / "params.yaml")
    learn = prepared_rows(cfg.data.learn, cfg.data.seed, "train")  # the prepare stage's learning rows
    val = get_task(cfg.data.learn.task).load("validation", 200, cfg.data.seed + 1, {})
    base, tok = load_model(proj / "artifacts/base_model", cfg.model)
    table_df = pd.read_parquet(proj / "artifacts/confidence.parquet")
    control, _, _ = pretrain_lab(control_lab(cfg.model.lab, cfg.control.corpus), cfg.data.max_length,
                                 desc="pretrain control")
    periodic = cfg.methods["lwf"]  # the default unlearning recipe (D_U is given per run)
    runs = {"vanilla": (base, (), MethodConfig()), "lwf_random": (base, unlearn_set(table_df, "random"), periodic),
            "lwf_oracle": (base, unlearn_set(table_df, "oracle"), periodic),
            "control": (control, (), MethodConfig())}
    res = {name: [curve(m, tok, cfg, a.at, s, learn, val, du, meth) for s in a.seeds]
           for name, (m, du, meth) in runs.items()}

    def items(name, step):
        return np.stack([r[step] for r in res[name]])

    where = f"{proj.resolve().name}, lab seed {cfg.model.lab.seed}, conflict_noise {cfg.model.lab.conflict_noise}"
    table(f"Validation accuracy after s learning steps, mean over seeds {a.seeds} ({where}; {machine()})",
          ["method", *[str(s) for s in a.at]], [[n, *[f"{items(n, s).mean():.3f}" for s in a.at]] for n in res])
    rows = []
    for label, x, y in (("control − vanilla", "control", "vanilla"), ("oracle − vanilla", "lwf_oracle", "vanilla"),
                        ("oracle − random", "lwf_oracle", "lwf_random")):
        cells = []
        for s in a.at:
            cells.append(interval(*paired_bootstrap(items(x, s) - items(y, s), 2000, 0)))
        rows.append([label, *cells])
    table(f"Paired differences [95% CI] after s learning steps ({where})", ["difference", *[str(s) for s in a.at]], rows)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
