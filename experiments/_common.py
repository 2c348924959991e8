"""Helpers the study scripts share: project copies run with `dvc repro`, params overrides, the lab
confidence table built in-process, AUROC intervals and the interval notation of the tables.

A study script makes the repository importable and imports from here:

    sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
    from experiments._common import ...
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks._common import lab_model, lab_rows, machine, table  # noqa: F401  (one copy of these)

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, threads: int) -> str:
    """Run `cmd` in a project copy with `threads` CPU threads, offline; its output, or exit with it.
    PYTHONPATH is dropped so that the copy's own `pipeline` (sync_code) is the one that runs."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{cmd} failed in {cwd}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def setdeep(raw: dict, key: str, value) -> None:
    """raw["a"]["b"]["c"] = value for key "a.b.c" (missing levels created)."""
    *head, last = key.split(".")
    for k in head:
        raw = raw.setdefault(k, {})
    raw[last] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """The `--set key=value` overrides (YAML values) applied to a params dict."""
    import yaml

    for kv in overrides:
        k, v = kv.split("=", 1)
        setdeep(raw, k, yaml.safe_load(v))
    return raw


def sync_code(proj: Path) -> None:
    """Today's code and pipeline definition into a study's project copy (DVC then reruns what a
    code change touches): pipeline/, stages/, the lm-eval task folder the lm_eval stage depends on,
    dvc.yaml, .dvcignore, .gitignore."""
    proj = Path(proj)
    for name in ("pipeline", "stages", "lm_eval_tasks"):
        shutil.rmtree(proj / name, ignore_errors=True)
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)


def project_copy(proj: Path, threads: int) -> bool:
    """A project copy at `proj` with today's code (a git and DVC repository the first time); True if new."""
    fresh = not (proj / ".dvc").exists()
    proj.mkdir(parents=True, exist_ok=True)
    sync_code(proj)
    if fresh:
        sh(["git", "init", "-q"], proj, threads)
        sh([sys.executable, "-m", "dvc", "init", "-q"], proj, threads)
    return fresh


class _Tee:
    """stdout that also keeps what it printed (`log_to`)."""

    def __init__(self, out):
        self.out, self.kept = out, []

    def write(self, text):
        self.kept.append(text)
        return self.out.write(text)

    def flush(self):
        self.out.flush()


@contextlib.contextmanager
def log_to(path: str | None):
    """Inside it, everything printed also goes to `path` (a study's `--log`: the printout is its
    record), written atomically when the block ends without an error: a failed run leaves the
    previous record as it was."""
    if not path:
        yield
        return
    from pipeline.io import write_text

    out, tee = sys.stdout, _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = out
    write_text(path, "".join(tee.kept))


def interval(d: float, lo: float, hi: float) -> str:
    """A point estimate with its 95% interval, as the lab tables print it."""
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def side(lo: float, hi: float, at: float = 0.0) -> str:
    """"+" / "-": the interval lies above / below `at`; "0": it contains it."""
    return "+" if lo > at else "-" if hi < at else "0"


def auroc_ci(df, positive: list[str], negative: list[str], n_boot: int = 1000) -> dict[str, tuple[float, float, float]]:
    """AUROC of every score column of a confidence table and of its baselines grad_norm and n_tokens
    (`positive` vs `negative` forgetting tasks), with a 95% interval from resampling samples within
    each class (an interval containing 0.5 = no side)."""
    import numpy as np

    from pipeline.confidence import auroc

    df = df[df["forget_task"].isin(list(positive) + list(negative))]
    y = df["forget_task"].isin(list(positive)).to_numpy()
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(0)
    boots = [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(n_boot)]
    out = {}
    for col in [c for c in df.columns if c.startswith("score_")] + [b for b in ("grad_norm", "n_tokens") if b in df]:
        v = df[col].to_numpy()
        b = [auroc(v[i], y[i]) for i in boots]
        out[col.removeprefix("score_")] = (auroc(v, y), *np.percentile(b, [2.5, 97.5]))
    return out


# the lab studies pretrain their own base models, so they have no optimum stage (theta*_L): the published
# optimum_distance is NaN there and they rank by this score unless told otherwise (--score)
LAB_STUDY_SCORE = "fisher_distance"


def lab_confidence_table(cfg, base, tok, learn: list[dict], score: str = LAB_STUDY_SCORE):
    """Steps 1-3 of the pipeline in-process on a base model the study pretrained (what the fisher, elicit and
    confidence stages compute): Fisher and mean gradient on the learning rows, the base model's answers to
    every forgetting task's training prompts (the prepare stage's rows), the confidence table ranked by
    `score` with the params' selection (confidence.forget_fraction, per_task, seed)."""
    import pandas as pd

    from pipeline.confidence import as_rows, confidence_scores, select
    from pipeline.elicit import elicit_task
    from pipeline.fisher import fisher_and_mean_grad
    from pipeline.tasks import get_task, prepared_rows, prepared_sets

    if score == "optimum_distance":
        raise SystemExit("optimum_distance needs theta*_L (the optimum stage), which these in-process studies do not "
                         "compute: pick another --score")
    F, gL = fisher_and_mean_grad(base, tok, learn[:cfg.fisher.n_samples], cfg.data.max_length)
    frames = [elicit_task(base, tok, get_task(ref.task), prepared_rows(ref, seed, "train"), cfg.elicit)[0]
              for kind, ref, seed in prepared_sets(cfg.data) if kind == "forget"]
    sk = pd.concat(frames, ignore_index=True)
    c = cfg.confidence
    sc = confidence_scores(base, tok, as_rows(sk), F, gL, cfg.data.max_length, seed=c.seed, learn_rows=learn,
                           probe=c.probe)
    return select(pd.concat([sk, sc], axis=1), score, c.forget_fraction, c.per_task, c.seed, c.auroc_positive)


VAL_SEED = 5000  # offset of the validation draws' seeds (the prepare stage uses data.seed + 0..400)


def held_out(cfg, split: str, n_learn: int = 200, n_general: int | None = None, forget_size: str = "n_test"):
    """(learning rows, {forgetting task: rows}, general rows) a study scores on. `validation` (every
    choice is made on it): `n_learn` rows of the learning task's validation split, each forgetting
    task's training-pool prompts (as many as its `forget_size` field: n_test or n_train) and
    `n_general` general-text rows (default its n_test), drawn with other seeds than the prepare
    stage's; `test`: the prepare stage's test rows (the final table only)."""
    from pipeline.tasks import get_task, prepared_rows, prepared_sets

    d = cfg.data
    if split == "test":
        sets = prepared_sets(d)
        learn, general = (prepared_rows(ref, seed, "test") for kind, ref, seed in (sets[0], sets[-1]))
        forget = {ref.key: prepared_rows(ref, seed, "test") for kind, ref, seed in sets if kind == "forget"}
        return learn, forget, general
    learn = get_task(d.learn.task).load("validation", n_learn, d.seed + 1, d.learn.options)
    forget = {ref.key: get_task(ref.task).load("train", getattr(ref, forget_size), d.seed + VAL_SEED + i, ref.options)
              for i, ref in enumerate(d.forget)}
    general = get_task(d.general.task).load("train", n_general or d.general.n_test, d.seed + VAL_SEED + 99,
                                            d.general.options)
    return learn, forget, general
