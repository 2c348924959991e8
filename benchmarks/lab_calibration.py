"""Calibrating the embedded lab's step budget on the VALIDATION split (never the test split):
learning-task accuracy every 10 fine-tuning steps for the base model and the control base model
(pretrained without the conflicting task), vanilla recipe, several seeds.

    python benchmarks/lab_calibration.py [--steps 100] [--seeds 0 1 2]

Uses artifacts/base_model (run `dvc repro base_model` first) and pretrains the control itself.
"""
import argparse
import os

from _common import machine, table

from pipeline.config import MethodConfig, load_config
from pipeline.evaluate import task_scores
from pipeline.lab import pretrain_lab
from pipeline.models import load_model
from pipeline.tasks import get_task
from pipeline.train import finetune


def curve(model, tok, cfg, steps, seed, learn, val):
    base = {k: v.clone() for k, v in model.state_dict().items()}
    out = []

    def cb(step):
        if step % 10 == 0:
            out.append(sum(task_scores(model, tok, "lab_learn", val, 8, 100)[0]) / len(val))
            model.train()

    finetune(model, tok, learn, [], cfg.finetune.model_copy(update={"max_steps": steps}), MethodConfig(), seed,
             cfg.data.max_length, on_learn_step=cb)
    model.load_state_dict(base)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    cfg = load_config("params.yaml")
    task = get_task(cfg.data.learn.task)
    learn = task.load("train", cfg.data.learn.n_train, cfg.data.seed, {})
    val = task.load("validation", 200, cfg.data.seed + 1, {})
    base, tok = load_model("artifacts/base_model", cfg.model)
    control, _, _ = pretrain_lab(cfg.model.lab, cfg.data.max_length, conflict_weight=0.0, desc="pretrain control")
    rows = []
    for name, m in (("base (with conflict)", base), ("control (no conflict)", control)):
        for s in a.seeds:
            rows.append([name, s] + curve(m, tok, cfg, a.steps, s, learn, val))
    table(f"Validation accuracy by fine-tuning step, vanilla recipe, lr {cfg.finetune.lr} ({machine()})",
          ["base model", "seed"] + [str(10 * (i + 1)) for i in range(a.steps // 10)], rows)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
