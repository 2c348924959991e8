"""Atomic artifact writing: everything goes to a temporary sibling path, then one `os.replace`.

A stage killed mid-write (even by SIGKILL) leaves at worst a `.tmp-*` sibling, never a partial
file or directory under the final name, so DVC never caches half an artifact.
"""
from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger("lwf")


def rounded(x, digits: int = 3):
    """`x` with every float rounded to `digits` decimals, through dicts, lists and tuples: for log lines
    (artifacts keep full precision)."""
    if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral):  # float, numpy floats
        return round(float(x), digits)
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(rounded(v, digits) for v in x)
    return x


def _clean_stale_tmp(final: Path) -> None:
    """Remove `.tmp-<name>-*` leftovers of an earlier killed write."""
    if final.parent.exists():
        for p in final.parent.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`.
    On a non-main rank of a multi-process run the result is discarded: only rank 0 writes."""
    from . import dist

    if not dist.is_main():
        scratch = Path(tempfile.mkdtemp(prefix="lwf-rank-"))
        try:
            yield scratch if is_dir else scratch / Path(path).name
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    target = tmp if is_dir else tmp / final.name
    old = None
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            # a directory cannot be replaced in one step: move the old one aside first (the window
            # with no directory under the final name is two renames long)
            old = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(target, final)
        else:
            os.replace(target, final)  # one atomic step, also over an existing file or link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_parquet(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_pretrained(path, model, tokenizer) -> None:
    """`save_pretrained` of model and tokenizer into one directory, atomically."""
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def save_dataset(path, ds) -> None:
    import datasets

    datasets.disable_progress_bars()
    with atomic_path(path, is_dir=True) as tmp:
        ds.save_to_disk(str(tmp))


def setup_logging() -> None:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from . import dist

    level = os.environ.get("LWF_LOG_LEVEL", "INFO") if dist.is_main() else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "prefect.server", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
