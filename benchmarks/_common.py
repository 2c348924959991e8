"""Shared helpers for the benchmark scripts: tiny models of a given width, timing, tables."""
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


def interval(d: float, lo: float, hi: float) -> str:
    """A point estimate with its 95% interval, as the lab tables print it."""
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def side(lo: float, hi: float, at: float = 0.0) -> str:
    """"+" / "-": the interval lies above / below `at`; "0": it contains it."""
    return "+" if lo > at else "-" if hi < at else "0"


def auroc_ci(df, positive: list[str], negative: list[str], n_boot: int = 1000) -> dict[str, tuple[float, float, float]]:
    """AUROC of every score column of a confidence table (`positive` vs `negative` forgetting tasks), with a
    95% interval from resampling samples within each class (an interval containing 0.5 = no side)."""
    import numpy as np

    from pipeline.confidence import auroc

    df = df[df["forget_task"].isin(list(positive) + list(negative))]
    y = df["forget_task"].isin(list(positive)).to_numpy()
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(0)
    boots = [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(n_boot)]
    out = {}
    for col in [c for c in df.columns if c.startswith("score_")] + ["grad_norm"]:
        v = df[col].to_numpy()
        b = [auroc(v[i], y[i]) for i in boots]
        out[col.removeprefix("score_")] = (auroc(v, y), *np.percentile(b, [2.5, 97.5]))
    return out


def sync_code(proj) -> None:
    """Today's code and pipeline definition into a benchmark's project copy (DVC then reruns what a
    code change touches): pipeline/, stages/, the lm-eval task folder the lm_eval stage depends on,
    dvc.yaml, .dvcignore, .gitignore."""
    import shutil
    from pathlib import Path

    root, proj = Path(__file__).resolve().parents[1], Path(proj)
    for name in ("pipeline", "stages", "lm_eval_tasks"):
        shutil.rmtree(proj / name, ignore_errors=True)
        shutil.copytree(root / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(root / name, proj / name)

