"""`lwf`: run the pipeline as a Prefect flow, run one stage, or inspect the confidence table.

    lwf run [--only STAGE ...]                           the DVC pipeline as one Prefect flow (DVC decides)
    lwf stage NAME [key=value ...]                       one stage, as dvc.yaml runs it
    lwf inspect [--task T] [--top N] [--bottom N] [--selected]   rows of artifacts/confidence.parquet by rank
    lwf check [--params P]                               validate params and print the parsed config
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from .config import ConfigError, load_config
from .stage import fail


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


def _check(a) -> None:
    try:
        cfg = load_config(a.params)
    except ConfigError as e:
        fail(str(e))
    print(json.dumps(cfg.model_dump(), indent=2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="lwf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the DVC pipeline as one Prefect flow, one task per stage")
    r.add_argument("--only", nargs="*", help="only these stages (e.g. finetune evaluate report), as dvc repro --single-item")
    r.set_defaults(fn=_run)
    s = sub.add_parser("stage", help="run one stage")
    s.add_argument("name")
    s.add_argument("items", nargs="*")
    s.add_argument("--params", default="params.yaml")
    s.set_defaults(fn=_stage)
    i = sub.add_parser("inspect", help="show the confidence table")
    i.add_argument("--task")
    i.add_argument("--top", type=int, default=20)
    i.add_argument("--bottom", type=int, default=0, help="also print the N least confident rows")
    i.add_argument("--selected", action="store_true")
    i.set_defaults(fn=_inspect)
    c = sub.add_parser("check", help="validate params")
    c.add_argument("--params", default="params.yaml")
    c.set_defaults(fn=_check)
    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
