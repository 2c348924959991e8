"""End to end with lm-eval (extra `eval`): `dvc repro` of the small lab project of test_e2e.py
(2 methods, 1 seed, no control) with one local-file task listed writes lm-eval's metrics for
every method into metrics/summary.json and reports/report.md; a changed lm-eval setting makes
only the lm_eval stages stale. Skipped without lm-eval, except in CI (CI=true)."""
import importlib.util
import json
import os

import pytest
import yaml

from test_e2e import RECORD, declared_params, dvc, make_project, ran_stages, run, small_params

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None and not os.environ.get("CI"),
                                                  reason="lm-eval not installed (pip install -e '.[eval]')")]
METHODS = ["vanilla", "lwf"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("lm_eval"))
    raw = small_params()
    raw["run"]["methods"] = METHODS
    raw["control"]["enabled"] = False
    raw["lm_eval"].update(tasks=["lwf_sst5"], limit=8, batch_size=16)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = run([*dvc(), "repro"], proj)
    return proj, out


def test_repro_writes_lm_eval_metrics_for_every_method(project):
    proj, out = project
    assert {f"lm_eval@{m}-lwf_sst5" for m in METHODS} | {"report"} <= ran_stages(out)
    summary = json.loads((proj / "metrics/summary.json").read_text())
    for m in METHODS:
        acc = summary[m]["lm_eval"]["lwf_sst5"]["acc"]
        assert 0 <= acc["mean"] <= 1 and acc["n"] == 8 and acc["stderr"] is not None
        res = json.loads((proj / f"artifacts/eval/lm_eval/{m}/lwf_sst5/results.json").read_text())
        items = res["seeds"]["0"]["items"]["lwf_sst5"]["acc"]
        assert len(items) == 8 and acc["mean"] == pytest.approx(sum(items) / 8)
        samples = (proj / f"artifacts/eval/lm_eval/{m}/lwf_sst5/samples/seed0/lwf_sst5.jsonl").read_text().splitlines()
        assert len(samples) == 8 and json.loads(samples[0])["arguments"][0][0].startswith("Review: ")
    assert "delta_ci95" in summary["lwf"]["lm_eval"]["lwf_sst5"]["acc"]
    report = (proj / "reports/report.md").read_text()
    assert "## lm-evaluation-harness" in report and "| lwf | lwf_sst5 | acc | 8 |" in report
    records = [json.loads(line) for line in (proj / RECORD).read_text().splitlines()]
    lm = [r for r in records if r["stage"] == "lm_eval"]
    assert {r["item"]["method"] for r in lm} == set(METHODS)
    for r in lm:
        declared = declared_params("lm_eval", r["item"])
        assert all(any(k == d or k.startswith(d + ".") for d in declared) for k in r["keys"]), r["keys"]


def test_changed_lm_eval_setting_reruns_only_that_evaluation(project):
    """After a change of lm_eval.limit DVC finds exactly the lm_eval stages stale (the report
    follows once their outputs change)."""
    proj, _ = project
    original = (proj / "params.yaml").read_text()
    raw = yaml.safe_load(original)
    raw["lm_eval"]["limit"] = 6
    try:
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        stale = set(json.loads(run([*dvc(), "status", "--json"], proj).strip().splitlines()[-1]))
    finally:
        (proj / "params.yaml").write_text(original)
    assert stale == {f"lm_eval@{m}-lwf_sst5" for m in METHODS}
