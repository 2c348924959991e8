"""The benchmark scripts: every one imports against today's `pipeline` (a renamed or removed name
breaks the import, not a later run), and the helpers the lab tables are computed with give
known answers on hand-made inputs."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py")))
def test_benchmark_imports(name):
    sys.modules.pop(name, None)
    mod = importlib.import_module(name)
    assert mod.__doc__, f"{name} does not say what it measures and how to run it"


def test_auroc_ci_sides():
    from _common import auroc_ci

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"forget_task": ["pos"] * 50 + ["neg"] * 50 + ["other"] * 10,
                       "score_perfect": np.r_[np.arange(50) + 100.0, np.arange(50), np.zeros(10)],
                       "score_noise": rng.random(110), "grad_norm": np.r_[np.zeros(50), np.ones(60)]})
    ci = auroc_ci(df, ["pos"], ["neg"], n_boot=200)
    assert ci["perfect"] == (1.0, 1.0, 1.0)
    assert ci["grad_norm"] == (0.0, 0.0, 0.0)
    m, lo, hi = ci["noise"]
    assert lo < 0.5 < hi and lo < m < hi


def test_unlearning_curve_rows(tmp_path):
    """Per unlearning step: the mean D_U NLL it ascended, and the next learning loss minus vanilla's."""
    from lab_robustness import unlearning_curve_rows

    def log(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["event", "step", "kind", "loss", "lr"]).to_csv(path, index=False)

    for proj, bump in (("a", 0.2), ("b", 0.4)):
        learn = [(i, i + 1, "learn", 1.0, 0.1) for i in range(6)]
        log(tmp_path / proj / "logs/train/vanilla/seed0.csv", learn)
        oracle = learn[:2] + [(9, 2, "unlearn", 0.3 if proj == "a" else 0.5, 0.1),
                              (2, 3, "learn", 1.0 + bump, 0.1)] + learn[3:]
        log(tmp_path / proj / "logs/train/lwf_oracle/seed0.csv", oracle)
    rows = unlearning_curve_rows([tmp_path / "a", tmp_path / "b"], [0], methods=("lwf_oracle",))
    assert rows == [[1, 2, "0.40", "+0.300"]]
