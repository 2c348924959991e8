"""How long the plain fine-tune that gives theta*_L (params `optimum`) should run: the learning
task's held-out loss on its VALIDATION split (never test) along one long plain fine-tune from each
base model, read every `--every` steps. With a constant LR after warmup, the state after step s of
a long run is the state a run with `optimum.steps: s` ends in (pipeline.optimum.plain_finetune).

    python experiments/lab_confidence/optimum_budget.py PROJECT [PROJECT ...] [--max-steps 200] [--every 10] [--n-val 200]

Each PROJECT is a project after `dvc repro optimum` (its artifacts/base_model and params.yaml:
`optimum.lr`, `batch_size`, `warmup_steps`, `seed`), e.g. the projects of lab_confidence.py.
Prints the mean validation NLL (mean target-token NLL per row) and accuracy per step count over the
projects, and per project the step count with the lowest validation NLL.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import machine, table  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data import encode_rows, sequence_nlls  # noqa: E402
from pipeline.evaluate import task_scores  # noqa: E402
from pipeline.models import load_model, trainable_model  # noqa: E402
from pipeline.optimum import plain_finetune  # noqa: E402
from pipeline.tasks import get_task, prepared_rows  # noqa: E402


def curve(proj: Path, max_steps: int, every: int, n_val: int) -> dict[int, tuple[float, float]]:
    cfg = load_config(proj / "params.yaml")
    o = cfg.optimum
    task = get_task(cfg.data.learn.task)
    learn = prepared_rows(cfg.data.learn, cfg.data.seed, "train")  # the prepare stage's learning rows
    val = task.load("validation", n_val, cfg.data.seed + 1, cfg.data.learn.options)
    model, tok = load_model(proj / "artifacts/base_model", cfg.model)
    model = trainable_model(model, cfg.model)
    encs = encode_rows(tok, val, cfg.data.max_length, cfg.model.add_bos)

    def point():
        nll = float(sequence_nlls(model, encs, tok.pad_token_id, 100).mean())
        acc = float(np.mean(task_scores(model, tok, cfg.data.learn.task, val, cfg.evaluate.max_new_tokens, 100)[0]))
        model.train()
        return nll, acc

    out = {0: point()}

    def cb(step, _loss):
        if step % every == 0:
            out[step] = point()

    plain_finetune(model, tok, learn, max_steps, o.lr, o.batch_size, o.seed, cfg.data.max_length, cfg.model.add_bos,
                   warmup_steps=o.warmup_steps, on_step=cb)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("projects", nargs="+")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--n-val", type=int, default=200)
    a = ap.parse_args()
    curves = {p: curve(Path(p), a.max_steps, a.every, a.n_val) for p in a.projects}
    steps = sorted(next(iter(curves.values())))
    o = load_config(Path(a.projects[0]) / "params.yaml").optimum
    nll = np.array([[c[s][0] for s in steps] for c in curves.values()])
    acc = np.array([[c[s][1] for s in steps] for c in curves.values()])
    table(f"Validation NLL / accuracy of the learning task after s plain AdamW steps (lr {o.lr:g}, batch {o.batch_size}, "
          f"warmup {o.warmup_steps}, seed {o.seed}), mean ± sd over {len(curves)} base models; {machine()}",
          ["steps", "val NLL", "val accuracy"],
          [[s, f"{nll[:, i].mean():.3f} ± {nll[:, i].std(ddof=1) if len(nll) > 1 else 0:.3f}",
            f"{acc[:, i].mean():.3f} ± {acc[:, i].std(ddof=1) if len(acc) > 1 else 0:.3f}"] for i, s in enumerate(steps)])
    table("Per base model: the step count with the lowest validation NLL", ["project", "argmin steps", "val NLL there",
                                                                            "val accuracy there"],
          [[Path(p).name, steps[int(np.argmin(nll[k]))], f"{nll[k].min():.3f}", f"{acc[k][int(np.argmin(nll[k]))]:.3f}"]
           for k, p in enumerate(curves)])
    print(f"\nmean curve: lowest validation NLL at {steps[int(np.argmin(nll.mean(0)))]} steps")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
