"""report: aggregate all methods over seeds -> metrics/summary.json, reports/report.md, plots."""
import logging

import pandas as pd

from pipeline import paths
from pipeline.io import atomic_path, read_json, write_json, write_text
from pipeline.report import (lm_eval_markdown, markdown, merge_lm_eval, plot_confidence, plot_learning_curves,
                             plot_methods, summarize, summarize_lm_eval, summary_line)
from pipeline.stage import UserError, main, stage

log = logging.getLogger("lwf")


@stage("report")
def run(cfg):
    """Write metrics/summary.json, reports/report.md and reports/*.png."""
    seeds = cfg.run.seeds
    evals = {m: read_json(paths.eval_file(m)) for m in cfg.run.methods}
    notes = []
    control = read_json(paths.eval_file(paths.CONTROL)) if paths.eval_file(paths.CONTROL).exists() else {}
    if "seeds" in control:
        evals["control"] = control
        if cfg.control.learn_options is not None:
            notes.append(f"`control`: the vanilla recipe from the same base model on the learning task with "
                         f"{cfg.control.learn_options} (control.learn_options), a task its knowledge does not "
                         "conflict with; its learn score is on those rows. control above vanilla = negative "
                         "transfer from the conflicting knowledge.")
        else:
            notes.append("`control`: the vanilla recipe from a base model pretrained WITHOUT the conflicting task. "
                         "control above vanilla = negative transfer from the conflicting knowledge.")
    base = [m for m, ev in evals.items()  # not fine-tuned (train: false), read from its train_stats
            if all(r.get("train", {}).get("trained") is False for r in ev["seeds"].values())]
    if base:
        notes.append(f"`{'`, `'.join(base)}`: the base model itself, not fine-tuned (its scores are the same for "
                     "every seed); its Δ is base − vanilla, so vanilla's gain from fine-tuning is minus that Δ.")
    summary = summarize(evals, seeds, cfg.report.bootstrap, cfg.report.seed)
    lm_evals = {}  # stages lm_eval@<method>-<task>, one per listed task (params lm_eval)
    for m in cfg.run.methods if cfg.lm_eval.tasks else []:
        files = [paths.lm_eval_dir(m, t) / "results.json" for t in cfg.lm_eval.tasks]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise UserError(f"{missing[0]} not found: run `dvc repro` first")
        lm_evals[m] = merge_lm_eval(m, [read_json(f) for f in files])
    lm_summary = summarize_lm_eval(lm_evals, seeds, cfg.report.bootstrap, cfg.report.seed) if "vanilla" in lm_evals else {}
    for m, tasks in lm_summary.items():
        summary[m]["lm_eval"] = tasks
    write_json(paths.METRICS / "summary.json", summary)
    conf_path = paths.METRICS / "confidence.json"
    confidence = read_json(conf_path) if conf_path.exists() else None
    scoring = evals["vanilla"]["seeds"][str(seeds[0])]["scoring"]
    write_text(paths.REPORTS / "report.md", markdown(summary, seeds, confidence, notes, scoring)
               + lm_eval_markdown(lm_summary, lm_evals))
    logs = {m: [pd.read_csv(paths.train_log(m, s)) for s in seeds] for m in cfg.run.methods}
    for name, fn, arg in (("learning_curves.png", plot_learning_curves, logs),
                          ("confidence_hist.png", plot_confidence, pd.read_parquet(paths.CONFIDENCE)),
                          ("methods.png", plot_methods, summary)):
        with atomic_path(paths.REPORTS / name) as tmp:
            fn(arg, tmp)
    for m, r in summary.items():
        log.info("stage report: %s", summary_line(m, r))


if __name__ == "__main__":
    main(run)
