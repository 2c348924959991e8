"""What every stage entry point shares: argument parsing, params validation, logging, and the
error contract (a user mistake -> one sentence on stderr, exit code 2, no traceback).

`@stage(name)` names a stage's `run` function (its log lines, its `--help`, the params record).
DVC runs each stage as its own process (`python -m stages.<name>`, dvc.yaml); the Prefect flow
(`pipeline/flow.py`, `lwf run`) never calls a stage function, it asks DVC to run the stage, so a
stage never imports Prefect (2 s saved per stage).
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


class UserError(RuntimeError):
    """A problem with the user's inputs (data, paths), reported without a traceback."""


def stage(name: str):
    def deco(fn):
        fn.stage_name = name
        return fn

    return deco


class ParamsRecorder:
    """A read-only view of a `Config` that records the dotted key of every value a stage reads
    (`LWF_RECORD_PARAMS=<file>`: the e2e test checks them against dvc.yaml's `params`). A
    sub-config used whole (`model_dump()`, iteration) records its own key; a list of sub-configs
    (`data.forget`) is recorded whole, the granularity DVC can declare. A method's setting taken
    from the `unlearning` recipe is recorded as the recipe's key, where DVC reads it."""

    def __init__(self, obj, path: str = "", seen: set | None = None):
        self._obj, self._path, self._seen = obj, path, set() if seen is None else seen

    def _key(self, name) -> str:
        return f"{self._path}.{name}" if self._path else str(name)

    def _wrap(self, value, key: str):
        from pydantic import BaseModel

        if isinstance(value, BaseModel) or (isinstance(value, dict) and value
                                             and all(isinstance(v, BaseModel) for v in value.values())):
            return ParamsRecorder(value, key, self._seen)  # a section, or `methods` (name -> method)
        self._seen.add(key)
        return value

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        recipe = getattr(self._obj, "_from_recipe", frozenset())  # a method's key set by `unlearning`
        if callable(value):  # model_dump() and friends: the whole section is used
            self._seen.add(self._path)
            if recipe:
                self._seen.add("unlearning")
            return value
        return self._wrap(value, f"unlearning.{name}" if name in recipe else self._key(name))

    def __getitem__(self, name):
        return self._wrap(self._obj[name], self._key(name))

    def get(self, name, default=None):
        return self[name] if name in self._obj else default

    def __contains__(self, name):
        return name in self._obj

    def __iter__(self):
        self._seen.add(self._path)
        return iter(self._obj)

    def items(self):
        self._seen.add(self._path)
        return self._obj.items()

    def __eq__(self, other):
        self._seen.add(self._path)
        return self._obj == getattr(other, "_obj", other)

    __hash__ = None


def _record_params(path: str, stage_name: str, item: dict, rec: ParamsRecorder) -> None:
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"stage": stage_name, "item": item, "keys": sorted(rec._seen)}) + "\n")


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
        record = os.environ.get("LWF_RECORD_PARAMS")
        if record:
            cfg = ParamsRecorder(cfg)
        fn(cfg, **item)
        if record:
            _record_params(record, fn.stage_name, item, cfg)
        log.info("stage %s: done in %.1fs%s", fn.stage_name, time.time() - t0, _peak_gpu_memory())
    except (ConfigError, UserError, TooLongError) as e:
        fail(str(e))


def _peak_gpu_memory() -> str:
    """', peak GPU memory X GiB' when the stage used CUDA (benchmarks/gpu_check.py reads it), else ''."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def load_rows(path, split: str) -> list[dict]:
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))[split].to_list()
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run the stage that makes it first (dvc repro)") from None


__all__ = ["Config", "stage", "main", "UserError", "load_rows"]
