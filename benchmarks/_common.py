"""Shared helpers for the benchmark scripts (and the studies under experiments/): tiny models of a given
width, timing, tables."""
from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{platform.machine()} {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def lab_model(hidden=128, layers=2, heads=4, inter=None, seed=0):
    from pipeline.config import LabConfig
    from pipeline.models import build_byte_tokenizer, tiny_llama

    tok = build_byte_tokenizer()
    lab = LabConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter or 3 * hidden,
                    seed=seed)
    return tiny_llama(len(tok), lab, max_len=64).eval(), tok


def lab_rows(task: str, n: int, seed=0):
    from pipeline.tasks import get_task

    t = get_task(task)
    rows = []
    while len(rows) < n:
        rows += t.load("train", min(n - len(rows), 192), seed + len(rows), {})
    return rows


def timeit(fn, repeat=3):
    """Best wall time of `repeat` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in r) + " |")


def parser(doc: str):
    """The argument parser every benchmark's main(argv) starts from: its docstring as the help and
    `--quick` (tiny sizes, seconds: what run_all.py --quick and the tests run)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of seconds, not a measurement)")
    return ap
