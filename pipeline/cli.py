"""`lwf`: the LWF pipeline from the terminal (run it from the project root, where params.yaml is).

`dvc repro` runs the same pipeline (dvc.yaml); `lwf` adds a Prefect flow over it and a look at its results.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config
from .stage import UserError, fail


def _run(a) -> None:
    """The pipeline as a Prefect flow whose tasks are the DVC stages (DVC decides what runs)."""
    from .flow import build_flow
    from .io import setup_logging

    setup_logging()
    try:
        load_config("params.yaml")
    except ConfigError as e:
        fail(str(e))
    t0 = time.time()
    try:
        states = build_flow()(only=a.only)
    except RuntimeError as e:
        fail(str(e))
    print(json.dumps({"wall_s": round(time.time() - t0, 2), "ran": [k for k, v in states.items() if v == "ran"],
                      "skipped": [k for k, v in states.items() if v != "ran"]}, indent=2))


def _stage(a) -> None:
    import pkgutil

    # the stages package is found at run time, as dvc.yaml's commands find it (pipeline/ never imports stages/)
    names = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module("stages").__path__))
    if a.name not in names:
        fail(f"unknown stage {a.name!r}; the stages are {', '.join(names)}")
    mod = importlib.import_module(f"stages.{a.name}")
    from .stage import main

    main(mod.run, ["--params", a.params, *a.items])


def _inspect(a) -> None:
    import pandas as pd

    from . import paths

    if not paths.CONFIDENCE.exists():
        fail(f"{paths.CONFIDENCE} not found: run `dvc repro confidence` first")
    df = pd.read_parquet(paths.CONFIDENCE)
    if a.task:
        df = df[df["forget_task"] == a.task]
    if a.selected:
        df = df[df["selected"]]
    cols = ["sample_id", "forget_task", "prompt", "response", "confidence", "rank", "selected"]
    cols += [c for c in ("correct",) if c in df]  # the base model's answer vs gold, where the task has gold
    ranked = df.sort_values("rank")[cols].copy()
    for c, n in (("prompt", 48), ("response", 32)):  # one line each, cut: `pd.read_parquet` has the full text
        ranked[c] = [t if len(t) <= n else t[:n - 1] + "…" for t in ranked[c].astype(str).str.replace(r"\s+", " ", regex=True)]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(ranked.head(a.top).to_string(index=False))
        if a.bottom:
            print(f"\nleast confident {a.bottom}:\n" + ranked.tail(a.bottom).to_string(index=False))
        print(f"\n{len(df)} rows; selected per task:\n{df.groupby('forget_task')['selected'].agg(['sum', 'count'])}")


def _report(a) -> None:
    from . import paths
    from .io import read_json
    from .report import summary_line

    path = paths.METRICS / "summary.json"
    if not path.exists():
        fail(f"{path} not found: run `dvc repro` (or `dvc repro report`) first")
    summary = read_json(path)
    print(f"{path}: mean ± std over seeds; Δ = method − vanilla [paired bootstrap 95% CI], "
          "(noise) = the interval contains 0; full tables: reports/report.md")
    for m, r in summary.items():
        print(summary_line(m, r))


def _check(a) -> None:
    from .checks import problems

    found = problems(a.params, ".")
    for p in found:
        print(f"lwf check: {p}", file=sys.stderr)
    if found:
        print(f"lwf check: {len(found)} problem(s) in {a.params}; nothing was run", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(load_config(a.params).model_dump(), indent=2))


def _init(a) -> None:
    from .init import write_init

    try:
        why = write_init(a)
    except ConfigError as e:
        fail(str(e))
    for line in why:
        print(f"  {line}")
    print(f"{a.params}: written from your model and data; next: lwf check, then dvc repro")


def _preset(a) -> None:
    from .presets import write_params

    try:
        cfg = write_params(a.name, a.params)
    except ConfigError as e:
        fail(str(e))
    print(f"{a.params}: preset {a.name} ({len(cfg.run.methods)} methods x {len(cfg.run.seeds)} seeds, model {cfg.model.name}); "
          "next: dvc repro")


def _tune(a) -> None:
    from .io import setup_logging
    from .tune import tune, write_choice

    setup_logging()
    try:
        cfg = load_config(a.params)
    except ConfigError as e:
        fail(str(e))
    ft, m = cfg.finetune, cfg.methods.get(a.method)
    ulr = m.unlearn_lr if m is not None else 0.01
    steps = a.steps or 2 * ft.max_steps

    def around(x: float) -> list[float]:  # x / 3, x, 3 x, in 3 significant digits
        return [float(f"{x * f:.3g}") for f in (1 / 3, 1, 3)]

    try:
        choice = tune(cfg, a.lrs or around(ft.lr), steps, a.at or [steps // 4, steps // 2, 3 * steps // 4],
                      a.unlearn_lrs or around(ulr),
                      a.seeds or cfg.run.seeds, a.n_val or cfg.optimum.n_validation, a.method, a.tolerance,
                      Path(a.out))
    except (ValueError, FileNotFoundError, UserError) as e:
        fail(f"{e} (lwf tune needs `dvc repro confidence` first)" if isinstance(e, FileNotFoundError) else str(e))
    print((Path(a.out) / "tune.md").read_text())
    if a.write:
        try:
            where = write_choice(choice, a.params)
        except ConfigError as e:
            fail(str(e))
        print(f"{a.params}: finetune.lr {choice['finetune.lr']:g}, finetune.max_steps {choice['finetune.max_steps']}, "
              f"{where} {choice[a.method + '.unlearn_lr']:g}; next: dvc repro")


# name, one line for `lwf --help` (at most 64 characters: one line each on an 80-column terminal), a longer
# description for `lwf NAME --help`, the function
COMMANDS = [
    ("check", "check params.yaml and its data as the stages will; runs nothing",
     "Check a params file as DVC and the stages will use it (pipeline/checks.py): the typed config; every key "
     "dvc.yaml reads is present; data files exist, hold the named fields and fill the prompt template; rows fit "
     "data.max_length; gold answers fit the generation lengths; splits are large enough. One line per problem, "
     "naming the key, and exit code 2; with none, prints the parsed config as JSON. Runs no stage.",
     _check),
    ("init", "write params.yaml for your model and files: lwf init --model ...",
     "Write a complete params.yaml for a model (local folder or hub id) and your data files (JSONL, JSON, CSV or "
     "parquet, in your own field names): the tasks as `custom` tasks, data.max_length from the longest tokenized "
     "row, generation lengths from the gold answers, the chat template when the tokenizer has one, budgets from "
     "the training split, the graceful guard, data.files and model.files so DVC tracks your files. Written "
     "(atomically) only when `lwf check` passes it. docs/custom-task.md, docs/examples/own_model/.", _init),
    ("preset", "write params.yaml from a preset: lwf preset smollm2_cpu",
     "Write the full params.yaml that DVC reads: the defaults (pipeline/config.py) with the differences of "
     "presets/NAME.yaml laid over them, validated, every key written out with what it means. NAME `lab` writes "
     "the defaults. The file is replaced in one step, and only when the preset validates.", _preset),
    ("tune", "choose steps and rates on the validation split: lwf tune",
     "Choose the learning rate and steps (vanilla learning curve) and the unlearning step size of a method on "
     "the learning task's validation split, never its test split (pipeline/tune.py: the rules). Needs `dvc repro "
     "confidence`. Writes tune/ (curve.csv, curve.png, choice.json, tune.md); --write sets the choice in "
     "params.yaml.", _tune),
    ("run", "run the pipeline as one Prefect flow (DVC decides what reruns)",
     "Run every stage of dvc.yaml as a task of one Prefect flow; each runs as `dvc repro --single-item`, so DVC "
     "decides what is stale. Prints the wall time and the stages that ran and were skipped, as JSON.", _run),
    ("stage", "run one stage by hand: lwf stage finetune method=lwf seed=0",
     "Run one stage in this process, as `python -m stages.NAME` (dvc.yaml's command) does; DVC does not record it.",
     _stage),
    ("inspect", "print the confidence table by rank (what LWF unlearns)",
     "Print rows of artifacts/confidence.parquet sorted by rank (1 = most confident), prompt and response cut to "
     "one line; pandas has the full table (README, 'Look at the results').", _inspect),
    ("report", "print the method comparison (scores, deltas, 95% CIs)",
     "Print metrics/summary.json per method: learning score (mean ± std over seeds), and for every method but "
     "vanilla the paired delta vs vanilla with its bootstrap 95% interval, for the learning score, the "
     "forgetting score and perplexity; `(noise)` marks an interval that contains 0.", _report),
]


def build_parser() -> argparse.ArgumentParser:
    def fmt(prog):
        return argparse.RawDescriptionHelpFormatter(prog, max_help_position=14, width=80)

    p = argparse.ArgumentParser(prog="lwf", description=__doc__, formatter_class=fmt,
                                epilog="`lwf COMMAND --help` lists a command's options.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", title="commands")
    parsers = {}
    for name, help_, description, fn in COMMANDS:
        parsers[name] = c = sub.add_parser(name, help=help_.replace("%", "%%"), description=description)
        c.set_defaults(fn=fn)
    parsers["check"].add_argument("--params", default="params.yaml", help="the params file (default params.yaml)")
    from .init import add_arguments

    add_arguments(parsers["init"])
    parsers["preset"].add_argument("name", help="a preset: lab (the defaults) or NAME of presets/NAME.yaml")
    parsers["preset"].add_argument("--params", default="params.yaml", help="the file to write (default params.yaml)")
    parsers["run"].add_argument("--only", nargs="*", metavar="STAGE",
                                help="only these stages (e.g. finetune evaluate report), as dvc repro --single-item")
    t = parsers["tune"]
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--lrs", type=float, nargs="+", help="learning rates (default: finetune.lr / 3, x 1, x 3)")
    t.add_argument("--steps", type=int, help="learning steps of each curve (default: 2 x finetune.max_steps)")
    t.add_argument("--at", type=int, nargs="+", help="steps scored on validation (default: quarters of --steps)")
    t.add_argument("--unlearn-lrs", type=float, nargs="+", help="unlearning step sizes (default: the method's / 3, x 1, x 3)")
    t.add_argument("--seeds", type=int, nargs="+", help="fine-tuning seeds (default: run.seeds)")
    t.add_argument("--n-val", type=int, help="validation rows (default: optimum.n_validation)")
    t.add_argument("--method", default="lwf", help="the unlearning method whose step is chosen (default lwf)")
    t.add_argument("--tolerance", type=float, default=0.01,
                   help="how far below vanilla's validation score an unlearning step may take it (default 0.01)")
    t.add_argument("--out", default="tune", help="output folder (default tune/)")
    t.add_argument("--write", action="store_true", help="set the chosen values in the params file")
    s = parsers["stage"]
    s.add_argument("name", help="a stage of dvc.yaml: prepare, base_model, fisher, elicit, confidence, finetune, "
                                "evaluate, control, report")
    s.add_argument("items", nargs="*",
                   help="its matrix item as key=value, e.g. method=lwf seed=0 (finetune), method=lwf (evaluate)")
    s.add_argument("--params", default="params.yaml")
    i = parsers["inspect"]
    i.add_argument("--task", help="only this forgetting task")
    i.add_argument("--top", type=int, default=20, help="the N most confident rows (default 20)")
    i.add_argument("--bottom", type=int, default=0, help="also print the N least confident rows")
    i.add_argument("--selected", action="store_true", help="only the rows selected for unlearning (D_U)")
    return p


def main(argv=None) -> None:
    a = build_parser().parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
