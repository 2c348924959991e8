"""What every stage entry point shares: argument parsing, params validation, logging, and the
error contract (a user mistake -> one sentence on stderr, exit code 2, no traceback).

`STAGES` registers each stage's `run` function by name; `pipeline/flow.py` wraps them as Prefect
tasks. The DVC commands call `run` directly, without importing Prefect (2 s saved per stage).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Callable

from .config import Config, ConfigError, load_config
from .data import TooLongError

log = logging.getLogger("lwf")
STAGES: dict[str, Callable] = {}


class UserError(RuntimeError):
    """A problem with the user's inputs (data, paths), reported without a traceback."""


def stage(name: str):
    def deco(fn):
        STAGES[name] = fn
        fn.stage_name = name
        return fn

    return deco


def fail(msg: str) -> None:
    print(f"lwf: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main(fn: Callable, argv=None) -> None:
    """Entry point of `python -m stages.<name> [--params P] [key=value ...]`."""
    from .io import setup_logging

    p = argparse.ArgumentParser(prog=f"stages.{fn.stage_name}", description=fn.__doc__)
    p.add_argument("--params", default=os.environ.get("LWF_PARAMS", "params.yaml"))
    p.add_argument("items", nargs="*", help="matrix item, e.g. method=lwf seed=0")
    a = p.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(a.params)
        item = dict(kv.split("=", 1) for kv in a.items)
        if "seed" in item:
            item["seed"] = int(item["seed"])
        t0 = time.time()
        log.info("stage %s: start %s", fn.stage_name, " ".join(a.items))
        fn(cfg, **item)
        log.info("stage %s: done in %.1fs", fn.stage_name, time.time() - t0)
    except (ConfigError, UserError, TooLongError) as e:
        fail(str(e))


def load_rows(path, split: str) -> list[dict]:
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))[split].to_list()
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run the stage that makes it first (dvc repro)") from None


__all__ = ["Config", "stage", "main", "UserError", "load_rows", "STAGES"]
