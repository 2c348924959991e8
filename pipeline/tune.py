"""`lwf tune`: the learning recipe's rate and steps, and the unlearning step size, chosen on the
learning task's VALIDATION split, for whatever task params.yaml names; the test split is never read.

1. The vanilla learning curve: one fine-tune per learning rate of `--lrs` and seed, scored on
   `--n-val` validation rows after each step of `--at` (step 0: the base model), as the evaluate
   stage scores the learning task.
2. The unlearning step: the method `--method` (default lwf) with the chosen recipe, one fine-tune per
   `--unlearn-lrs` and seed, scored the same way, with the unlearning steps its guard let it take and
   the mean NLL of its D_U (how much it unlearned).

The rules, fixed before any run:
- recipe: the (lr, steps) with the highest mean validation score over the seeds; ties: fewer steps,
  then the smaller lr. Under a constant LR schedule a run scored at step k is the run of k steps, so
  every point of the curve is a candidate; under a decaying schedule (the schedule depends on the
  total) only the last point, `--steps`, is, and the rest of the curve is shown, not chosen from.
- unlearning step: the largest `unlearn_lr` whose mean validation score is at most `--tolerance`
  below vanilla's at the chosen recipe and whose guard let it take at least 90% of its scheduled
  unlearning steps in every seed; when none qualifies the current value stays, and the table says why.

Needs the outputs of `dvc repro confidence` (prepared data, base model, confidence table). Writes
tune/curve.csv, tune/curve.png, tune/choice.json and tune/tune.md (each atomically); `--write` also
sets `finetune.lr`, `finetune.max_steps` and the method's `unlearn_lr` in params.yaml (comments kept,
validated before the file is replaced), so the next `dvc repro` reruns the fine-tunes with them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from . import paths

log = logging.getLogger("lwf")

OUT = Path("tune")
MIN_TAKEN = 0.9  # share of the scheduled unlearning steps the guard must let a candidate take, every seed


def _model(cfg):
    """A fresh copy of the base model, set up as the finetune stage sets it up."""
    from .models import load_model, trainable_model

    model, tok = load_model(paths.BASE_MODEL, cfg.model)
    model = trainable_model(model, cfg.model)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.model.prefix_cache:
        from .prefix_cache import serve_from_store

        serve_from_store(model, paths.prefix_store("train"))
    return model, tok


def curve(cfg, m, recipe, seed: int, at: list[int], val_rows: list[dict], nll_rows: list[dict]
          ) -> tuple[list[dict], dict]:
    """One fine-tune of method `m` with the learning recipe `recipe` (a `FinetuneConfig`); a point
    (step, validation score, mean NLL of `nll_rows`: the tuned method's D_U) after each learning step
    of `at`, the last one after the run's last event; and the run's statistics."""
    from .callbacks import OnLearnStep
    from .evaluate import set_nlls, task_scores
    from .runs import run_rows
    from .schedule import learning_steps
    from .tasks import get_task
    from .train import finetune

    learn, d_u, guard_rows = run_rows(cfg, m)
    task = get_task(cfg.data.learn.task, cfg.data.learn.options)
    model, tok = _model(cfg)
    points = []

    final = learning_steps(recipe, m)

    def point(model, step: int, after_run: bool = False) -> None:
        if step not in at or (step == final and not after_run):  # the last point: after the run's last event
            return
        training = model.training
        model.eval()
        items, _ = task_scores(model, tok, task, val_rows, cfg.evaluate.max_new_tokens, cfg.evaluate.batch_size,
                               cfg.model.add_bos)
        nll = set_nlls(model, tok, nll_rows, cfg.data.max_length, cfg.evaluate.batch_size, cfg.model.add_bos)
        points.append({"step": step, "val_score": sum(items) / len(items),
                       "d_u_nll": sum(nll) / len(nll)})
        model.train(training)

    point(model, 0)
    _, stats = finetune(model, tok, learn, d_u, recipe, m, seed, cfg.data.max_length, cfg.model.add_bos,
                        callbacks=[OnLearnStep(point)], guard_rows=guard_rows)
    point(model, final, after_run=True)  # (an unlearning step may follow the last learning step)
    return points, stats


def choose_recipe(df, constant: bool, steps: int) -> tuple[float, int]:
    """(lr, steps) by the rule of the module docstring, from the vanilla rows of the curve table."""
    pts = df[(df.phase == "learn") & (df.step > 0) & ((df.step == steps) | constant)]
    mean = pts.groupby(["lr", "step"]).val_score.mean().reset_index()
    best = mean.sort_values(["val_score", "step", "lr"], ascending=[False, True, True]).iloc[0]
    return float(best.lr), int(best.step)


def choose_unlearn_lr(df, lr: float, steps: int, tolerance: float) -> tuple[float | None, list[dict]]:
    """The unlearning step size by the rule of the module docstring, and one verdict per candidate."""
    at_recipe = df[(df.phase == "learn") & (df.lr == lr) & (df.step == steps)]
    vanilla, vanilla_nll = at_recipe.val_score.mean(), at_recipe.d_u_nll.mean()
    rows, chosen = [], None
    for ulr, g in df[(df.phase == "unlearn") & (df.step == steps)].groupby("unlearn_lr"):
        score, taken = g.val_score.mean(), (g.unlearn_taken / g.unlearn_scheduled.clip(lower=1)).min()
        ok_score, ok_taken = score >= vanilla - tolerance, taken >= MIN_TAKEN and g.unlearn_scheduled.min() > 0
        why = "qualifies" if ok_score and ok_taken else "; ".join(
            ([f"validation score {score - vanilla:+.3f} vs vanilla, below -{tolerance:g}"] if not ok_score else [])
            + ([f"no unlearning step is scheduled within {steps} learning steps"] if not g.unlearn_scheduled.min()
               else [f"the guard let it take {taken:.0%} of its unlearning steps in one seed"] if not ok_taken else []))
        rows.append({"unlearn_lr": float(ulr), "val_score": float(score), "vs_vanilla": float(score - vanilla),
                     "d_u_nll": float(g.d_u_nll.mean()), "d_u_nll_vs_vanilla": float(g.d_u_nll.mean() - vanilla_nll),
                     "min_taken": float(taken), "verdict": why})
        if ok_score and ok_taken:
            chosen = float(ulr)  # groupby sorts ascending: the last one that qualifies is the largest
    return chosen, rows


def tune(cfg, lrs: list[float], steps: int, at: list[int], unlearn_lrs: list[float], seeds: list[int],
         n_val: int, method: str, tolerance: float, out: Path = OUT) -> dict:
    """Run both phases and write `out`/; returns the choice (choice.json)."""
    import pandas as pd
    from tqdm import tqdm

    from .io import atomic_path, write_csv
    from .optimum import validation_rows
    from .runs import run_rows

    if method not in cfg.methods or cfg.methods[method].unlearn == "none":
        raise ValueError(f"--method {method!r} is not a method of params `methods` that unlearns")
    val_rows = validation_rows(cfg.data.learn, n_val, cfg.data.seed)
    nll_rows = run_rows(cfg, cfg.methods[method])[1]  # the tuned method's D_U: how much a run unlearned
    at = sorted({0, *[k for k in at if 0 < k < steps], steps})
    vanilla = cfg.methods["vanilla"] if "vanilla" in cfg.methods else cfg.methods[method].model_copy(
        update={"unlearn": "none"})
    log.info("lwf tune: %s, %d validation rows of %s, lrs %s, %d steps, seeds %s", cfg.model.name, len(val_rows),
             cfg.data.learn.task, lrs, steps, seeds)
    records = []
    for lr in tqdm(lrs, desc="tune: learning rates"):
        recipe = cfg.finetune.model_copy(update={"lr": lr, "max_steps": steps})
        for seed in seeds:
            points, _ = curve(cfg, vanilla, recipe, seed, at, val_rows, nll_rows)
            records += [{"phase": "learn", "lr": lr, "unlearn_lr": None, "seed": seed, **p,
                         "unlearn_taken": 0, "unlearn_scheduled": 0} for p in points]
    df = pd.DataFrame(records)
    constant = cfg.finetune.lr_schedule == "constant"
    lr, best_steps = choose_recipe(df, constant, steps)
    recipe = cfg.finetune.model_copy(update={"lr": lr, "max_steps": best_steps})
    for ulr in tqdm(unlearn_lrs, desc="tune: unlearning steps"):
        m = cfg.methods[method].model_copy(update={"unlearn_lr": ulr})
        for seed in seeds:
            points, stats = curve(cfg, m, recipe, seed, [best_steps], val_rows, nll_rows)
            records += [{"phase": "unlearn", "lr": lr, "unlearn_lr": ulr, "seed": seed, **p,
                         "unlearn_taken": stats["unlearn_steps_taken"],
                         "unlearn_scheduled": stats["unlearn_steps_scheduled"]} for p in points if p["step"]]
    df = pd.DataFrame(records)
    unlearn_lr, verdicts = choose_unlearn_lr(df, lr, best_steps, tolerance)
    learn = df[df.phase == "learn"]
    base, best = learn[learn.step == 0].val_score.mean(), learn[(learn.lr == lr) & (learn.step == best_steps)].val_score.mean()
    note = "" if best > base else (f"no setting scored above the base model ({base:.3f}) on validation: the recipe is "
                                   "the rule's tie-break, not evidence of learning")
    if note:
        log.warning("lwf tune: %s", note)
    choice = {"finetune.lr": lr, "finetune.max_steps": best_steps,
              f"{method}.unlearn_lr": unlearn_lr if unlearn_lr is not None else cfg.methods[method].unlearn_lr,
              "unlearn_lr_changed": unlearn_lr is not None, "method": method, "seeds": seeds,
              "n_validation": len(val_rows), "task": cfg.data.learn.task, "schedule": cfg.finetune.lr_schedule,
              "tolerance": tolerance, "note": note, "candidates": verdicts}
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "curve.csv", df)
    with atomic_path(out / "choice.json") as tmp:
        tmp.write_text(json.dumps(choice, indent=2) + "\n")
    with atomic_path(out / "tune.md") as tmp:
        tmp.write_text(markdown(df, choice))
    plot(df, out / "curve.png")
    return choice


def markdown(df, choice: dict) -> str:
    """The curve (mean and per-seed validation score per lr and step) and the unlearning candidates."""
    lines = [f"## lwf tune: {choice['task']}, {choice['n_validation']} validation rows, seeds {choice['seeds']}, "
             f"schedule {choice['schedule']}", "", "| lr | step | validation score (mean) | per seed |", "|---|---|---|---|"]
    for (lr, step), g in df[df.phase == "learn"].groupby(["lr", "step"]):
        lines.append(f"| {lr:g} | {step} | {g.val_score.mean():.3f} | {', '.join(f'{v:.3f}' for v in g.val_score)} |")
    lines += ["", f"Chosen recipe: lr {choice['finetune.lr']:g}, {choice['finetune.max_steps']} steps."
              + (f" Note: {choice['note']}." if choice.get("note") else ""), "",
              f"| {choice['method']} unlearn_lr | validation score | vs vanilla | D_U NLL (vs vanilla) | unlearning "
              "steps taken (lowest seed) | verdict |", "|---|---|---|---|---|---|"]
    for c in choice["candidates"]:
        lines.append(f"| {c['unlearn_lr']:g} | {c['val_score']:.3f} | {c['vs_vanilla']:+.3f} | {c['d_u_nll']:.3f} "
                     f"({c['d_u_nll_vs_vanilla']:+.3f}) | "
                     f"{c['min_taken']:.0%} | {c['verdict']} |")
    key = f"{choice['method']}.unlearn_lr"
    lines += ["", f"Chosen unlearn_lr: {choice[key]:g}" + ("" if choice["unlearn_lr_changed"] else
                                                            " (unchanged: no candidate qualified)"), ""]
    return "\n".join(lines)


def plot(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for lr, g in df[df.phase == "learn"].groupby("lr"):
        mean = g.groupby("step").val_score.mean()
        ax.plot(mean.index, mean.values, marker="o", label=f"vanilla, lr {lr:g}")
    for ulr, g in df[df.phase == "unlearn"].groupby("unlearn_lr"):
        ax.scatter(g.step, g.val_score, marker="x", label=f"unlearn_lr {ulr:g}")
    ax.set_xlabel("learning steps")
    ax.set_ylabel("validation score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_choice(choice: dict, params: str | Path = "params.yaml") -> str:
    """Set the chosen values in the params file, comments kept; replaced only if it still validates.
    Returns the key that got the unlearning step."""
    import io

    from ruamel.yaml import YAML

    from .config import load_config
    from .presets import write_atomic

    yaml = YAML()
    raw = yaml.load(Path(params).read_text())
    raw.setdefault("finetune", {})["lr"] = choice["finetune.lr"]
    raw["finetune"]["max_steps"] = choice["finetune.max_steps"]
    method = choice["method"]
    own = (raw.get("methods") or {}).get(method) or {}
    if "unlearn_lr" in own:  # the method sets its own step
        own["unlearn_lr"], where = choice[f"{method}.unlearn_lr"], f"methods.{method}.unlearn_lr"
    else:  # it takes the recipe's, as every unlearning method that sets none does
        raw.setdefault("unlearning", {})["unlearn_lr"] = choice[f"{method}.unlearn_lr"]
        where = "unlearning.unlearn_lr (every unlearning method that sets no unlearn_lr of its own)"
    buf = io.StringIO()
    yaml.dump(raw, buf)
    tmp = Path(params).with_name(f".{Path(params).name}.tune-check")
    tmp.write_text(buf.getvalue())
    try:
        load_config(str(tmp))  # raises ConfigError naming the key
    finally:
        tmp.unlink()
    write_atomic(params, buf.getvalue())
    return where
