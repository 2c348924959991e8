"""The terminal a user meets first: `lwf --help`, `lwf report`, `lwf stage`, and the stages' log lines
(rounded numbers, not `delta [0.265, 0.4100416666666664]`)."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
LONG_FLOAT = re.compile(r"\d\.\d{4,}")  # a number printed with more than 3 decimals


def _lwf(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_help_lists_every_command_on_one_line_each(tmp_path):
    from pipeline.cli import COMMANDS

    r = _lwf(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    names = [c[0] for c in COMMANDS]
    assert {"check", "inspect", "run", "report", "stage"} <= set(names)
    for name, help_, *_ in COMMANDS:
        lines = [ln for ln in r.stdout.splitlines() if ln.split()[:1] == [name]]
        assert len(lines) == 1 and help_.replace("%%", "%") in lines[0], (name, r.stdout)
        assert len(lines[0]) <= 80, lines[0]
    assert "%%" not in r.stdout


def _project(tmp_path, eval_result):
    """A project holding only what the report stage reads: two methods' evaluations over 2 seeds (scores
    with many decimals), their training logs and a confidence table."""
    from pipeline import paths

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["run"]["methods"], raw["run"]["seeds"] = ["vanilla", "lwf"], [0, 1]
    raw["control"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    rng = np.random.default_rng(0)
    evals = {"vanilla": eval_result({s: rng.integers(0, 2, 12) / 3 for s in (0, 1)}, 1 / 3, 2.123456789),
             "lwf": eval_result({s: rng.integers(0, 2, 12) / 7 for s in (0, 1)}, 1 / 7, 2.987654321)}
    for m, ev in evals.items():
        (tmp_path / paths.eval_file(m)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / paths.eval_file(m)).write_text(json.dumps(ev))
        for s in (0, 1):
            log = tmp_path / paths.train_log(m, s)
            log.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"event": [0, 1], "step": [1, 2], "kind": ["learn", "learn"], "loss": [1 / 3, 1 / 7],
                          "lr": [1e-4, 1e-4]}).to_csv(log, index=False)
    (tmp_path / paths.CONFIDENCE).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"forget_task": ["a", "a", "b", "b"], "confidence": [0.1, 0.2, 0.3, 0.4],
                  "selected": [False, False, True, True]}).to_parquet(tmp_path / paths.CONFIDENCE)
    return raw


def test_report_stage_logs_rounded_numbers_and_lwf_report_prints_them(tmp_path, monkeypatch, caplog, eval_result):
    import stages.report
    from pipeline.config import parse_config

    raw = _project(tmp_path, eval_result)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="lwf"):
        stages.report.run(parse_config(raw))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage report:")]
    assert len(lines) == 2 and "vanilla" in lines[0] and "lwf" in lines[1]
    assert re.search(r"Δ learn [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", lines[1]), lines[1]
    assert "Δ ppl +0.864" in lines[1]
    assert not any(LONG_FLOAT.search(ln) for ln in lines), lines

    r = _lwf(["report"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert "metrics/summary.json" in out[0] and len(out) == 3
    assert out[1].startswith("vanilla") and out[2].startswith("lwf") and "Δ forget" in out[2]
    assert out[1:] == [ln.removeprefix("stage report: ") for ln in lines]  # the same line as the stage's log
    assert not LONG_FLOAT.search(r.stdout)


def test_summary_line_rounds_to_three_decimals():
    from pipeline.report import summary_line

    r = {"learn_score": 0.6754321, "learn_score_std": 0.0123456, "learn_score_delta": 0.3375,
         "learn_score_delta_ci95": [0.265, 0.4100416666666664]}
    assert summary_line("lwf", r) == "lwf              learn 0.675 ± 0.012  Δ learn +0.338 [+0.265, +0.410]"
    r["learn_score_delta_ci95"] = [-0.01, 0.4100416666666664]
    assert summary_line("lwf", r).endswith("[-0.010, +0.410] (noise)")


def test_rounded_reaches_nested_values_and_numpy_floats():
    from pipeline.io import rounded

    got = rounded({"auroc": {"cosine": np.float64(0.99987654), "random": 0.52312345}, "n": 3,
                   "ci": [0.265, 0.4100416666666664], "name": "x"})
    assert got == {"auroc": {"cosine": 1.0, "random": 0.523}, "n": 3, "ci": [0.265, 0.41], "name": "x"}
    assert type(got["auroc"]["cosine"]) is float  # no `np.float64(...)` in a log line


def test_report_and_stage_errors_are_one_line(tmp_path):
    r = _lwf(["report"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    want = "lwf: error: metrics/summary.json not found: run `dvc repro` (or `dvc repro report`) first"
    assert r.stderr.strip() == want
    r = _lwf(["stage", "finetun"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown stage 'finetun'" in r.stderr and "finetune" in r.stderr
