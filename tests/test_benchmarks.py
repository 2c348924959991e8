"""The benchmark scripts: each one's cheapest real path runs against today's `pipeline` (tiny sizes,
seconds each: a renamed argument or removed name fails here, not in a later measurement), and the
helpers the lab tables are computed with give known answers on hand-made inputs. The scripts that
need a finished pipeline run (lab_calibration, lab_design_search, unlearn_step on a pretrained
model, aggregate_runs) run on the e2e test's project (tests/test_e2e.py); real_step and real_grads
need the packaged SmolLM2 weights (marked `real`)."""
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


def _fresh(name):
    sys.modules.pop(name, None)
    mod = importlib.import_module(name)
    assert mod.__doc__, f"{name} does not say what it measures and how to run it"
    return mod


def _table(out: str, title: str) -> list[list[str]]:
    """The body rows of the markdown table printed under a title line containing `title`."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if title in ln)
    rows = []
    for ln in lines[start + 1:]:
        if ln.startswith("|"):
            rows.append([c.strip() for c in ln.strip("|").split("|")])
        elif rows:
            break
    assert len(rows) >= 3, out  # header, rule, at least one row
    return rows[2:]


NOT_RUN = {  # scripts whose cheapest real path is a whole pipeline run or the real model: too slow for the suite
    "lab_robustness": "a full `dvc repro` per lab seed",
    "pipeline_overhead": "three no-op `dvc repro`, an `lwf run` and a Prefect server start (~1 min)",
    "real_step": "SmolLM2-135M training steps",
    "real_grads": "SmolLM2-135M per-sample gradients in subprocesses",
    "objective_frontier": "a 1000-step lab pretraining and the confidence stage per lab seed before any fine-tune (~4 min)",
    "lab_confidence": "`dvc repro confidence` per lab seed and Fisher site",
    "optimum_budget": "runs on the projects lab_confidence.py made",
    "real_confidence": "SmolLM2-135M through the confidence stage (~8 min)",
    "lm_eval_cpu": "SmolLM2-135M under lm-evaluation-harness",
    "prefix_cache": "SmolLM2-135M fine-tuning steps and evaluations, cached and uncached, in subprocesses",
    "learning_curve": "SmolLM2-135M fine-tunes of 150 steps scored on SST-5 validation (~8 min a seed)",
    "perplexity_batches": "SmolLM2-135M perplexity of 100 GSM8K questions, twice",
    "objective_frontier_real": "36+ SmolLM2-135M fine-tunes in a finished `dvc repro` of the powered preset (~1 h)",
}


def test_every_benchmark_script_is_run_by_a_test():
    """A new script gets a run here (or in test_e2e.py), or a reason in NOT_RUN, and a docstring."""
    here = Path(__file__).read_text().split("NOT_RUN = {")[0] + (Path(__file__).parent / "test_e2e.py").read_text()
    here += "".join(Path(__file__).read_text().partition("def test_grads_benchmark")[1:])
    for p in BENCH.glob("*.py"):
        if p.stem != "_common":
            assert f'"{p.stem}"' in here or p.stem in NOT_RUN, f"benchmarks/{p.name}: run by no test and not in NOT_RUN"
            assert _fresh(p.stem).__doc__


def test_grads_benchmark(capsys):
    _fresh("grads").main(n=4, chunk=2)
    rows = _table(capsys.readouterr().out, "Per-sample gradients, 4 samples")
    assert len(rows) == 2 and all(float(r[-1]) < 1e-4 for r in rows)  # vectorized == loop


def test_generation_benchmark(capsys):
    _fresh("generation").main(n=4, max_new=2)
    rows = _table(capsys.readouterr().out, "Generation, 4 prompts x 2 new tokens")
    assert [r[0] for r in rows] == ["one prompt at a time", "batched (64), KV cache"]


def test_finetune_overhead_benchmark(capsys):
    _fresh("finetune_overhead").main(steps=4, every=2, repeat=1)
    rows = _table(capsys.readouterr().out, "Fine-tune wall time, 4 learning steps")
    assert [r[0] for r in rows] == ["vanilla", "lwf"] and float(rows[1][1]) > 0


def test_optimizer_step_benchmark(capsys):
    diff = _fresh("optimizer_step").compare(blocks=1, repeat=1, hidden=32, inter=64, kv=16)
    rows = _table(capsys.readouterr().out, "AdamW step over 9 tensors")
    assert [r[0].split(" ")[0] for r in rows] == ["torch.optim.AdamW", "pipeline.dist.adamw"]
    assert diff < 1e-5  # the same update


def test_confidence_scaling_benchmark(capsys):
    _fresh("confidence_scaling").main(sizes=(4, 8))
    rows = _table(capsys.readouterr().out, "Confidence stage seconds")
    assert [r[0] for r in rows] == ["w128", "w256"]


def test_unlearn_step_benchmark_on_a_random_model(capsys, monkeypatch, tmp_path):
    mod = _fresh("unlearn_step")
    monkeypatch.setattr(mod, "N", 2)
    mod.main(str(tmp_path))  # no artifacts/base_model there: the randomly initialised lab model
    rows = _table(capsys.readouterr().out, "One unlearning step after 2 learning steps")
    assert len(rows) == 9
    for r in rows:  # the separate and shared steps ascend: D_U NLL rises
        if r[0] != "joint":
            assert float(r[4]) > 0, r


@pytest.mark.xfail(strict=True, raises=Exception, reason="broken on main, found by this run: under FakeTensorMode the "
                   "pipeline's data-dependent reads (data.target_positions' target count, fisher's shard mask) "
                   "raise DataDependentOutputException; strict: passes -> remove this mark")
def test_paper_memory_benchmark(capsys, tmp_path):
    out = tmp_path / "mem.json"
    _fresh("paper_memory").main(["--params", str(BENCH.parent / "presets/smollm2_gpu.yaml"), "--seq", "32",
                                 "--json", str(out)])
    import json

    results = json.loads(out.read_text())["results"]
    assert [r["stage"] for r in results] == ["fisher", "confidence", "finetune", "generation"]
    assert all(r["peak_gib"] > 0 for r in results) and capsys.readouterr().out


def test_run_all_runs_every_benchmark_it_lists(monkeypatch, capsys):
    """run_all's list: each module's main is called (stubbed here: each is run for real above)."""
    import runpy

    called = []
    for name in ("grads", "generation", "finetune_overhead", "confidence_scaling", "pipeline_overhead"):
        mod = _fresh(name)
        monkeypatch.setattr(mod, "main", lambda *a, _n=name: called.append(_n))
    monkeypatch.setattr(sys, "argv", ["run_all.py"])
    script = "run_all"
    runpy.run_path(str(BENCH / f"{script}.py"), run_name="__main__")
    assert called == ["grads", "generation", "finetune_overhead", "confidence_scaling", "pipeline_overhead"]


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
