"""End to end on the embedded lab (shrunk budgets): the real `dvc repro` in a temporary copy of
the project, its caching behaviour, and the real Prefect flow; same params -> same bytes."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

SMALL = {
    ("run", "seeds"): [0],
    ("run", "methods"): ["base", "vanilla", "lwf", "lwf_ga", "lwf_oracle"],
    ("model", "lab", "pretrain_steps"): 60,
    ("finetune", "max_steps"): 8,
    ("methods", "lwf", "unlearn_every"): 2,
    ("methods", "lwf_ga", "unlearn_every"): 2,
    ("methods", "lwf_oracle", "unlearn_every"): 2,
    ("data", "learn", "n_train"): 32,
    ("data", "learn", "n_test"): 24,
    ("data", "forget"): [{"task": "lab_conflict", "n_train": 24, "n_test": 20},
                         {"task": "lab_neutral", "n_train": 24, "n_test": 20},
                         {"task": "lab_count", "n_train": 24, "n_test": 20}],
    ("data", "general", "n_test"): 20,
    ("fisher", "n_samples"): 32,
    ("optimum", "steps"): 12,
    ("report", "bootstrap"): 200,
}


def small_params() -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for keys, v in SMALL.items():
        node = raw
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = v
    return raw


def make_project(dst: Path) -> Path:
    for name in ("pipeline", "stages", "lm_eval_tasks"):  # lm_eval_tasks: a dependency of the lm_eval stage
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, dst / name)
    (dst / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    run(["git", "init", "-q"], dst)
    run(["dvc", "init", "-q"], dst)
    run(["dvc", "config", "core.analytics", "false"], dst)
    return dst


RECORD = ".lwf/params_read.jsonl"  # relative to the project: each project records its own


def env(pythonpath=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
         "LWF_RECORD_PARAMS": RECORD}  # every stage appends the params keys it read (pipeline.stage)
    e.pop("PYTHONPATH", None)
    if pythonpath:  # a script run by its path imports `pipeline` from here (not from the editable install)
        e["PYTHONPATH"] = str(pythonpath)
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")  # `python` in dvc.yaml = this one
    return e


def run(cmd, cwd, timeout=900, pythonpath=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(pythonpath), timeout=timeout)
    if r.returncode:  # every process's own error lines too (a launched worker's cause sits above the launcher's)
        cause = "\n".join(line for line in r.stderr.splitlines() if "Error" in line or "rank0" in line)[-4000:]
        raise AssertionError(f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\nerror lines:\n{cause}")
    return r.stdout + r.stderr


def ran_stages(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def dvc():
    return [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("dvc"))
    out = run([*dvc(), "repro"], proj)
    return proj, out


def test_repro_writes_every_artifact(dvc_project):
    proj, out = dvc_project
    assert {"prepare", "base_model", "optimum", "fisher", "elicit", "confidence", "control_model", "finetune_control",
            "evaluate_control", "report", "finetune@vanilla", "finetune@lwf", "evaluate@vanilla",
            "evaluate@lwf", "prefix_train", "prefix_eval"} <= ran_stages(out)
    import pandas as pd
    import torch

    for part in ("train", "eval"):  # model.prefix_cache is off in the lab: a placeholder the stages never load
        assert torch.load(proj / f"artifacts/prefix/{part}.pt", weights_only=True) == {"version": 1, "prefix_cache": False}

    df = pd.read_parquet(proj / "artifacts/confidence.parquet")
    assert {"sample_id", "forget_task", "prompt", "response", "confidence", "rank", "selected"} <= set(df.columns)
    assert len(df) == 72 and df["selected"].sum() == 18
    assert {"score_probe", "score_loss_rise", "nll_base", "nll_probe", "selected_oracle"} <= set(df.columns)
    assert df["score_loss_rise"].notna().all() and df["score_probe"].notna().all()
    assert df["selected_oracle"].sum() == 18 and (df.loc[df.selected_oracle, "forget_task"] == "lab_conflict").all()
    summary = json.loads((proj / "metrics/summary.json").read_text())
    assert {"vanilla", "lwf", "control"} <= set(summary)
    control = json.loads((proj / "metrics/control_model.json").read_text())  # control.corpus: random_cities
    assert control["conflict_noise"] == 1.0 and control["conflict_weight"] > 0 and control["steps"] == 60
    assert (proj / "artifacts/control_base_model/model.safetensors").exists()
    assert (proj / "artifacts/models/control/seed0/model.safetensors").exists()
    assert json.loads((proj / "artifacts/eval/control.json").read_text())["method"] == "control"
    for m in ("vanilla", "lwf", "control"):  # the summary is the evaluations' per-item scores, aggregated
        ev = json.loads((proj / f"artifacts/eval/{m}.json").read_text())["seeds"]["0"]
        items = ev["items"]
        assert ev["learn_score"] == pytest.approx(sum(items["learn"]) / len(items["learn"]))
        assert len(items["learn"]) == 24 and set(items["learn"]) <= {0.0, 1.0}
        nll, tokens = sum(items["general/nll"]), sum(items["general/tokens"])
        assert ev["perplexity"] == pytest.approx(math.exp(nll / tokens)) and len(items["general/nll"]) == 20
        assert summary[m]["learn_score"] == pytest.approx(ev["learn_score"])
        assert summary[m]["perplexity"] == pytest.approx(ev["perplexity"])
    assert "learn_score_delta_ci95" in summary["lwf"]
    assert "lwf_oracle" in summary and "perplexity_delta_ci95" in summary["lwf"]
    # the base model as a row: its files are the base model's, its scores the base model's own, its delta vs vanilla
    assert "evaluate@base" in ran_stages(out) and "perplexity_delta_ci95" in summary["base"]
    base_eval = json.loads((proj / "artifacts/eval/base.json").read_text())["seeds"]["0"]
    assert base_eval["train"]["trained"] is False
    for f in (proj / "artifacts/base_model").iterdir():
        assert (proj / "artifacts/models/base/seed0" / f.name).read_bytes() == f.read_bytes(), f.name
    assert summary["base"]["learn_score_delta"] == pytest.approx(summary["base"]["learn_score"] - summary["vanilla"]["learn_score"])
    assert "| base |" in (proj / "reports/report.md").read_text().split("| vanilla |")[0]
    # the mechanism in the outputs: lwf's D_U was unlearned relative to vanilla
    assert summary["lwf"]["d_u_nll"] > summary["vanilla"]["d_u_nll"]
    assert set(summary["lwf"]["nll"]) == {"d_u", "own_d_u", "self/lab_conflict", "self/lab_neutral", "self/lab_count"}
    # two objectives side by side: NPO (lwf) and GA (lwf_ga), each with its d_u_nll, perplexity, learning score
    stats = {m: json.loads((proj / f"artifacts/models/{m}/seed0/train_stats.json").read_text()) for m in ("lwf", "lwf_ga")}
    assert (stats["lwf"]["objective"], stats["lwf_ga"]["objective"]) == ("npo", "ga")
    assert stats["lwf_ga"]["unlearn_steps_scheduled"] == 4 and stats["lwf_ga"]["unlearn_steps_taken"] >= 1
    # the graceful guard watched every unlearning step, and the report says what it decided
    for m in ("lwf", "lwf_ga"):
        g = stats[m]["guard"]
        assert g["kind"] == "graceful" and g["checks"] >= 1 and g["largest_ppl_rise"] is not None
        assert (g["stopped_at"] is None) == (stats[m]["unlearn_steps_taken"] == stats[m]["unlearn_steps_scheduled"])
    assert "Unlearning guard:" in (proj / "reports/report.md").read_text()
    for m in ("lwf", "lwf_ga"):
        assert {"d_u_nll", "perplexity", "learn_score", "d_u_nll_delta_ci95"} <= set(summary[m])
    assert summary["lwf_ga"]["d_u_nll"] > summary["vanilla"]["d_u_nll"]
    conf = json.loads((proj / "metrics/confidence.json").read_text())
    assert 0 <= conf["auroc"]["optimum_distance"] <= 1
    assert conf["score"] == "cosine" and (df["confidence"] == df["score_cosine"]).all()  # the default (docs/confidence.md)
    pos = df.loc[df.forget_task == "lab_conflict", "score_fisher_distance"].to_numpy()
    neg = df.loc[df.forget_task != "lab_conflict", "score_fisher_distance"].to_numpy()
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()  # AUROC by definition
    assert conf["auroc"]["fisher_distance"] == pytest.approx(pairs)
    for f in ("reports/report.md", "reports/learning_curves.png", "reports/confidence_hist.png",
              "reports/methods.png", "logs/train/lwf/seed0.csv", "artifacts/fisher.safetensors", "dvc.lock"):
        assert (proj / f).exists(), f
    log = pd.read_csv(proj / "logs/train/lwf/seed0.csv")
    steps, g = list(log.loc[log.kind == "unlearn", "step"]), stats["lwf"]["guard"]
    assert steps == list(range(2, 2 * len(steps) + 1, 2))  # on schedule (unlearn_every 2) until the guard stopped it
    undone = g["stopped_at"] is not None and "raised" in g["reason"]  # a step undone by the guard is logged too
    assert len(steps) == stats["lwf"]["unlearn_steps_taken"] + undone and (undone or len(steps) == 4)
    assert not list(proj.rglob(".tmp-*"))


def test_second_repro_has_nothing_to_do(dvc_project):
    proj, _ = dvc_project
    out = run([*dvc(), "repro"], proj)
    assert ran_stages(out) == set()
    assert "Data and pipelines are up to date" in out


def declared_params(stage: str, item: dict) -> list[str]:
    """dvc.yaml's `params` of a stage, with ${item...} filled in for a matrix/foreach item."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    spec = spec.get("do", spec)
    out = []
    for p in spec.get("params", []):
        for k, v in item.items():
            p = p.replace(f"${{item.{k}}}", str(v))
        out.append(p.replace("${item}", str(item.get("method", ""))))
    return out


def test_declared_params_cover_every_key_a_stage_reads(dvc_project):
    """Each stage run by `dvc repro` recorded the params keys it read (LWF_RECORD_PARAMS); each
    must be declared in dvc.yaml (a key or one of its parent sections), else DVC serves stale
    results after a change of that key."""
    proj, _ = dvc_project
    records = [json.loads(line) for line in (proj / RECORD).read_text().splitlines()]
    assert {r["stage"] for r in records} >= {"prepare", "base_model", "optimum", "fisher", "elicit", "confidence", "control_model",
                                             "finetune", "evaluate", "report"}
    assert {r["stage"] for r in records if r["item"].get("method") == "control"} == {"finetune", "evaluate"}
    missing = set()
    for r in records:  # the control's runs of finetune / evaluate are the stages finetune_control / evaluate_control
        name = f"{r['stage']}_control" if r["item"].get("method") == "control" else r["stage"]
        if r["stage"] == "prefix":  # one stage module, two dvc.yaml stages (prefix_train, prefix_eval)
            name = f"prefix_{r['item']['part']}"
        declared = declared_params(name, r["item"])
        for key in r["keys"]:
            if not any(key == d or key.startswith(d + ".") for d in declared):
                missing.add((r["stage"], key))
    assert not missing, f"read but not declared in dvc.yaml: {sorted(missing)}"


@pytest.mark.parametrize("change", [{"chat_template": True}, {"lora": {"r": 4}}, {"gradient_checkpointing": True}])
def test_model_settings_mark_their_stages_stale(dvc_project, change):
    """A model setting that changes prompts or trainable parameters reruns every stage that
    tokenises or trains (the lab's base model comes out byte-identical, so the stages must
    declare these keys themselves)."""
    proj, _ = dvc_project
    original = (proj / "params.yaml").read_text()
    raw = yaml.safe_load(original)
    raw["model"].update(change)
    try:
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        stale = set(json.loads(run([*dvc(), "status", "--json"], proj).strip().splitlines()[-1]))
    finally:
        (proj / "params.yaml").write_text(original)
    key = next(iter(change))
    expect = {"finetune@vanilla", "finetune@lwf"}
    if key != "gradient_checkpointing":  # only the fine-tune trains with it
        expect |= {"fisher", "confidence"}
    if key == "chat_template":  # prompts change everywhere (evaluate reruns after a LoRA change
        expect |= {"elicit", "evaluate@vanilla", "evaluate@lwf"}  # through its new models)
    expect |= {"finetune_control"} | ({"evaluate_control"} if key == "chat_template" else set())
    assert expect <= stale, (change, sorted(stale))
    assert "control_model" not in stale  # nothing that shapes the control's base model changed


def test_a_change_to_the_prompt_formatting_marks_elicit_and_after_stale(dvc_project):
    """Code deps: every stage that formats a prompt imports pipeline/data.py (`format_prompt`),
    and dvc.yaml lists it (tests/test_dvc_deps.py derives the lists), so a change there marks
    elicit and everything built on its self-knowledge stale."""
    proj, _ = dvc_project
    data_py = proj / "pipeline/data.py"
    original = data_py.read_text()
    changed = original.replace("    return prompt\n", "    return prompt.strip()\n", 1)
    assert changed != original
    try:
        data_py.write_text(changed)
        stale = set(json.loads(run([*dvc(), "status", "--json"], proj).strip().splitlines()[-1]))
    finally:
        data_py.write_text(original)
    assert {"elicit", "confidence", "finetune@vanilla", "finetune@lwf", "evaluate@vanilla", "evaluate@lwf",
            "finetune_control", "evaluate_control", "report"} <= stale, sorted(stale)
    assert "Data and pipelines are up to date" in run([*dvc(), "status"], proj)


@pytest.mark.parametrize("key,value", [("unlearn_every", 4), ("unlearn_lr", 0.05)])
def test_changing_an_unlearning_setting_reruns_only_that_method(dvc_project, key, value):
    """Unlearning settings are per method: a change of lwf's reruns lwf's fine-tune and what follows it,
    never vanilla, the other unlearning methods, the control or anything before the fine-tunes."""
    proj, _ = dvc_project
    before = (proj / "artifacts/confidence.parquet").read_bytes()
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["methods"]["lwf"][key] = value
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    stages = ran_stages(run([*dvc(), "repro"], proj))
    assert stages == {"finetune@lwf", "evaluate@lwf", "report"}, sorted(stages)
    assert (proj / "artifacts/confidence.parquet").read_bytes() == before


def _interval(cell: str) -> tuple[float, float, float]:
    """"+0.012 [-0.030, +0.055]" -> (0.012, -0.03, 0.055)."""
    d, rest = cell.split(" [")
    lo, hi = rest.rstrip("]").split(", ")
    return float(d), float(lo), float(hi)


def test_studies_that_read_a_finished_run(dvc_project, table_rows):
    """The study scripts (experiments/) that read a finished pipeline run, on this one at their smallest sizes
    (tests/test_benchmarks.py runs the others), their numbers checked: "aggregate_runs" prints the
    run's own metrics; "lab_calibration" (pretrains the control, 2 and 4 learning steps, seed 0)
    and "lab_design_search" (one design, one lab seed, its 2 oracle settings, 3 fine-tuning seeds)
    print accuracies on the 200 validation items and differences that are the differences of those
    accuracies, inside their intervals."""
    proj, _ = dvc_project
    exp = ROOT / "experiments"
    summary, conf, elicit = (json.loads((proj / f"metrics/{f}.json").read_text()) for f in ("summary", "confidence", "elicit"))
    out = run([sys.executable, str(exp / "aggregate_runs.py"), str(proj)], proj, pythonpath=proj)
    learn = {r[0]: r for r in table_rows(out, "Learning score on the test split")}
    assert {m: r[1] for m, r in learn.items()} == {m: f"{s['learn_score']:.3f}" for m, s in summary.items()}
    assert {m: r[3] for m, r in learn.items() if m != "vanilla"} == \
           {m: f"{s.get('learn_score_delta', 0.0):+.3f}" for m, s in summary.items() if m != "vanilla"}
    assert {r[0]: r[1] for r in table_rows(out, "Confidence AUROC")} == {k: f"{v:.3f}" for k, v in conf["auroc"].items()}
    assert {r[0]: r[1] for r in table_rows(out, "Base model's self-knowledge")} == \
           {t: f"{e['agreement_with_gold']:.3f}" for t, e in elicit.items()}

    def check_accuracies_and_differences(acc: dict[str, float], diffs: dict[str, str], one_seed: bool):
        assert all(0 <= a <= 1 for a in acc.values()), acc
        if one_seed:  # a share of the 200 items, printed with 3 decimals: exact
            assert all(abs(a * 200 - round(a * 200)) < 1e-6 for a in acc.values()), acc
        for label, cell in diffs.items():
            x, y = label.split(" − ")
            d, lo, hi = _interval(cell)
            assert lo <= d <= hi and abs(d - (acc[x] - acc[y])) <= 0.0015, (label, cell, acc)

    out = run([sys.executable, str(exp / "lab_design/lab_calibration.py"), "--project", str(proj), "--at", "2", "4",
               "--seeds", "0"], proj, pythonpath=proj)
    accuracy = {r[0]: r[1:] for r in table_rows(out, "Validation accuracy after s learning steps")}
    assert set(accuracy) == {"vanilla", "lwf_random", "lwf_oracle", "control"}
    names = {"control": "control", "vanilla": "vanilla", "oracle": "lwf_oracle", "random": "lwf_random"}
    for col in (0, 1):  # after 2 and after 4 learning steps
        acc = {short: float(accuracy[full][col]) for short, full in names.items()}
        diffs = {r[0]: r[1 + col] for r in table_rows(out, "Paired differences [95% CI] after s learning steps")}
        assert set(diffs) == {"control − vanilla", "oracle − vanilla", "oracle − random"}
        check_accuracies_and_differences(acc, diffs, one_seed=True)
    out = run([sys.executable, str(exp / "lab_design/lab_design_search.py"), "--lab-seeds", "0", "--designs",
               "noisy conflict 0.5 (default)"], proj, pythonpath=proj)
    assert "ranked by fisher_distance" in out  # the score behind its documented figures, said in its output
    rows = table_rows(out, "Lab designs on lab_learn's VALIDATION split")  # one row per oracle setting
    assert len(rows) == 2 and len({r[2] for r in rows}) == 2 and len({(r[5], r[7], r[9]) for r in rows}) == 1
    for row in rows:
        assert row[0] == "noisy conflict 0.5 (default)" and row[1] == "0" and 0 <= float(row[3]) <= 1
        acc = {"vanilla": float(row[5]), "oracle": float(row[6]), "control": float(row[7])}
        check_accuracies_and_differences(acc, {"oracle − vanilla": row[8], "control − vanilla": row[9]}, one_seed=False)


def lwf_run(proj) -> dict:
    out = run([sys.executable, "-m", "pipeline.cli", "run"], proj)
    return json.loads(out[out.rindex('{\n  "wall_s"'):].split("\n}\n")[0] + "\n}")


def test_removal_study_applies_its_rule_to_the_figures_it_prints(dvc_project, table_rows):
    """"removal" on a finished run, two settings (the run's own step and an AdamW step): one row per
    setting, every NLL a positive number, the share of the gap closed and the verdict recomputed from
    the printed figures by the rule in its docstring (NLL at or above the control's, perplexity
    within +5%), and the chosen setting named."""
    proj, _ = dvc_project
    out = run([sys.executable, str(ROOT / "experiments/removal/removal.py"), str(proj), "--seeds", "0", "1",
               "--settings", "separate:npo:0.03", "adam:npo:0.001:1"], proj, pythonpath=proj)
    rows = {r[1]: r for r in table_rows(out, "lwf_oracle under each unlearning step")}
    assert set(rows) == {"separate:npo:0.03", "adam:npo:0.001:1"}
    for row in rows.values():
        van, orc, ctl = (float(x) for x in row[2].split(" / "))
        assert min(van, orc, ctl) > 0
        if abs(ctl - van) > 0.01:
            assert abs(float(row[3]) - (orc - van) / (ctl - van)) < 0.01 + 0.002 / abs(ctl - van)
        ppl = float(row[4].rstrip("%")) / 100
        assert row[7] == ("yes" if orc >= ctl and ppl <= 0.05 else "no") or abs(orc - ctl) < 0.002 or abs(ppl - 0.05) < 0.001
    assert "Chosen by the rule:" in out


def test_prefect_flow_is_tracked_by_dvc(dvc_project, tmp_path):
    """`lwf run`: every DVC stage is a Prefect task run and DVC decides. A fresh project runs
    every stage and gives the `dvc repro` bytes; a second run runs none; after a param change it
    reruns exactly the stages `dvc repro` reruns for the same change."""
    proj, _ = dvc_project
    flow_proj = make_project(tmp_path / "flow")
    (flow_proj / "params.yaml").write_text((proj / "params.yaml").read_text())
    first = lwf_run(flow_proj)
    assert first["skipped"] == [] and {"prepare", "report", "finetune@lwf"} <= set(first["ran"])
    assert (flow_proj / ".prefect").is_dir()  # Prefect state stayed in the project
    assert (flow_proj / "artifacts/confidence.parquet").read_bytes() == (proj / "artifacts/confidence.parquet").read_bytes()
    assert json.loads((flow_proj / "metrics/summary.json").read_text()) == json.loads((proj / "metrics/summary.json").read_text())
    assert run([*dvc(), "status"], flow_proj).strip().endswith("Data and pipelines are up to date.")

    noop = lwf_run(flow_proj)
    assert noop["ran"] == [] and set(noop["skipped"]) == set(first["ran"])

    twin = tmp_path / "twin"
    shutil.copytree(flow_proj, twin, symlinks=True)
    for p in (flow_proj, twin):
        raw = yaml.safe_load((p / "params.yaml").read_text())
        raw["methods"]["lwf"]["unlearn_every"] = 3
        (p / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    by_dvc = ran_stages(run([*dvc(), "repro"], twin))
    by_flow = set(lwf_run(flow_proj)["ran"])
    assert by_flow == by_dvc and "finetune@lwf" in by_flow and "fisher" not in by_flow


def test_sigkill_mid_finetune_leaves_no_output_and_resumes_identically(dvc_project, tmp_path):
    """Kill a running finetune stage with SIGKILL after its first checkpoint: no partial model is
    left under the output path; rerunning resumes from the checkpoint and ends with the same
    weights as an uninterrupted run."""
    import signal
    import time

    proj, _ = dvc_project
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["finetune"].update(max_steps=400, checkpoint_every=20)
    params = tmp_path / "long.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out_dir = proj / "artifacts/models/lwf/seed0"
    stage = [sys.executable, "-m", "stages.finetune", "--params", str(params), "method=lwf", "seed=0"]

    run(stage, proj)  # uninterrupted reference
    reference = (out_dir / "model.safetensors").read_bytes()
    shutil.rmtree(out_dir)

    ckpt = proj / ".lwf/checkpoints/lwf-seed0.pt"
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        p = subprocess.Popen(stage, cwd=proj, env=env(), stdout=err, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not ckpt.exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        time.sleep(0.1)
        running = p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert running, f"the stage ended before it was killed (exit {p.returncode}):\n{log.read_text()[-3000:]}"
    assert ckpt.exists(), f"no checkpoint when killed:\n{log.read_text()[-3000:]}"
    assert not out_dir.exists()
    out = run(stage, proj)
    assert "resumed lwf-seed0 from event" in out
    assert (out_dir / "model.safetensors").read_bytes() == reference
    assert not ckpt.exists() and not list((proj / "artifacts/models/lwf").glob(".tmp-*"))


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    """Same tensors up to float reduction order: per tensor, relative L2 distance <= 1e-5 and
    largest elementwise difference <= 1e-5 (weights here are ~1e-2; measured: 5e-7 after 8 steps)."""
    assert set(a) == set(b), what
    for k in a:
        d = (a[k].double() - b[k].double())
        assert d.abs().max() <= 1e-5 and d.norm() <= 1e-5 * max(a[k].double().norm(), 1e-12), (what, k)


FIVE = (["stages.fisher"], ["stages.elicit"], ["stages.confidence"], ["stages.finetune", "method=lwf", "seed=0"],
        ["stages.evaluate", "method=lwf"])
OUTPUTS = ["artifacts/fisher.safetensors", "artifacts/self_knowledge.parquet", "artifacts/confidence.parquet",
           "artifacts/models/lwf/seed0/model.safetensors", "artifacts/eval/lwf.json"]


@pytest.fixture(scope="module")
def one_process(dvc_project, tmp_path_factory):
    """Single-process outputs of the five distributable stages under the project's params."""
    proj, _ = dvc_project
    ref = tmp_path_factory.mktemp("one")
    for stage in FIVE:
        run([sys.executable, "-m", "pipeline.launch", *stage], proj)
    for f in OUTPUTS:
        (ref / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(proj / f, ref / f)
    return ref


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(dvc_project, one_process, tmp_path, strategy):
    """optimum, fisher, elicit, confidence, finetune and evaluate under `accelerate launch` with 2 CPU
    processes (gloo), replicated (ddp) or sharded (fsdp), give the single-process outputs:
    generations, selections and per-item scores identical, floats within 1e-5 (sums are reduced
    in another order)."""
    import numpy as np
    import pandas as pd
    from safetensors.torch import load_file

    proj, _ = dvc_project
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["launch"] = {"num_processes": 2, "mixed_precision": "no", "strategy": strategy}
    params = tmp_path / "two.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in FIVE:
        out = run([sys.executable, "-m", "pipeline.launch", stage[0], "--params", str(params), *stage[1:]], proj)
        assert "Traceback" not in out and "distributed: 2 processes joined the process group" in out
        assert ("sharded over 2 processes (FSDP)" in out) == (strategy == "fsdp")

    one = one_process
    for name in (OUTPUTS[0], OUTPUTS[3]):
        assert_same_weights(load_file(one / name), load_file(proj / name), name)
    a, b = pd.read_parquet(one / OUTPUTS[1]), pd.read_parquet(proj / OUTPUTS[1])
    cols = ["sample_id", "forget_task", "prompt", "response", "truncated"]
    assert a[cols].equals(b[cols])
    assert np.allclose(a["mean_logprob"], b["mean_logprob"], rtol=1e-5, atol=1e-6)
    a, b = pd.read_parquet(one / OUTPUTS[2]), pd.read_parquet(proj / OUTPUTS[2])
    assert (a["selected"] == b["selected"]).all() and (a["rank"] == b["rank"]).all()
    assert np.allclose(a["confidence"], b["confidence"], rtol=1e-5)
    a, b = json.loads((one / OUTPUTS[4]).read_text()), json.loads((proj / OUTPUTS[4]).read_text())
    sa, sb = a["seeds"]["0"], b["seeds"]["0"]
    scores = [k for k in sa["items"] if k == "learn" or k.startswith("forget/")]  # exact; NLLs are float sums
    assert {k: sa["items"][k] for k in scores} == {k: sb["items"][k] for k in scores}
    assert sa["items"].keys() == sb["items"].keys()
    for k in set(sa["items"]) - set(scores):
        assert np.allclose(sa["items"][k], sb["items"][k], rtol=1e-5), k
    assert sa["perplexity"] == pytest.approx(sb["perplexity"], rel=1e-5)


def test_fsdp_finetune_resumes_bit_identically(dvc_project, tmp_path):
    """launch.strategy fsdp (FSDP2, 2 CPU processes): each process holds about half of the
    parameters, and a run stopped after a checkpoint and resumed ends with the weights and loss log of
    an uninterrupted one, bit for bit, also when the guard has undone an unlearning step."""
    proj, _ = dvc_project
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["finetune"]["checkpoint_every"] = 2
    raw["launch"] = {"num_processes": 2, "mixed_precision": "no", "strategy": "fsdp"}
    # the guard undoes the unlearning step at event 4, just before the checkpoint: the undone shards must be
    # what the next forward sees (FSDP2 keeps the root's weights gathered after the guard's forward)
    raw["methods"]["lwf"].update(unlearn_every=4, unlearn_lr=0.05, guard="graceful", guard_max_rise=0.01)
    params = tmp_path / "fsdp.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = tmp_path / "resume.json"
    run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(ROOT / "tests/workers/fsdp_resume.py"), str(params), str(result)], proj)
    r = json.loads(result.read_text())
    assert r["guard"]["stopped_at"] == 4 and "raised the guard rows' NLL" in r["guard"]["reason"]
    assert r["max_abs_diff"] == 0.0 and r["n_tensors"] > 0 and r["logs_equal"]
    assert 0.45 < r["shard_fraction"] <= 0.55


def test_readme_commands_on_the_shipped_params(dvc_project):
    """The README's experiment and inspection commands, as a user types them: `dvc exp run -S`
    (DVC rewrites params.yaml with its YAML 1.2 writer, which drops the quotes of "no"), `dvc exp
    show` lists the experiment with its metrics, `dvc metrics show`, `lwf inspect`, `lwf check`.
    Runs last: it leaves the workspace at the experiment's state."""
    proj, _ = dvc_project
    git = ["git", "-c", "user.name=lwf-test", "-c", "user.email=lwf-test@localhost"]
    run([*git, "add", "-A"], proj)
    run([*git, "commit", "-qm", "baseline"], proj)
    run([*dvc(), "exp", "run", "-S", "++methods.lwf.unlearn_every=8"], proj)
    run([*dvc(), "exp", "run", "-S", "++methods.lwf.unlearn_optimizer=joint", "-S", "++methods.lwf.alpha=0.3"], proj)
    assert "mixed_precision: no\n" in (proj / "params.yaml").read_text()  # DVC's writer: unquoted
    shown = json.loads(run([*dvc(), "exp", "show", "--json"], proj).strip().splitlines()[-1])
    text = json.dumps(shown)
    assert '"unlearn_every": 8' in text and '"unlearn_optimizer": "joint"' in text and '"d_u_nll"' in text
    assert "workspace" in run([*dvc(), "exp", "show", "--only-changed"], proj)  # a table cut to the terminal
    assert "learn_score" in run([*dvc(), "metrics", "show"], proj)
    out = run([sys.executable, "-m", "pipeline.cli", "inspect", "--top", "5", "--selected"], proj)
    assert "selected per task" in out
    out = run([sys.executable, "-m", "pipeline.cli", "inspect", "--top", "2", "--bottom", "3"], proj)
    lines = out.split("least confident 3:\n")[1].split("\n\n")[0].strip().splitlines()
    assert len(lines) == 4 and "correct" in lines[0]  # header + the 3 rows of highest rank
    assert json.loads(run([sys.executable, "-m", "pipeline.cli", "check"], proj))["launch"]["mixed_precision"] == "no"


def test_dvc_repro_benchmark_counts_stages_and_processes(tmp_path):
    """benchmarks/dvc_repro.py ("dvc_repro") on a repository of two commits: 2 stages, then 3 (one
    without a Python process); each in its own fresh clone, its stages, processes and times."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=lwf-test", "-c", "user.email=lwf-test@localhost"]
    run(["git", "init", "-q"], repo)
    run([*dvc(), "init", "-q"], repo)
    stage = "  s{0}:\n    cmd: python -c \"open('o{0}', 'w').write('{0}')\"\n    outs:\n      - o{0}\n"
    for tag, body in (("two", stage.format(1) + stage.format(2)),
                      ("three", stage.format(1) + stage.format(2) + "  s3:\n    cmd: echo 3 > o3\n    outs:\n      - o3\n")):
        (repo / "dvc.yaml").write_text("stages:\n" + body)
        run([*git, "add", "-A"], repo)
        run([*git, "commit", "-qm", tag], repo)
        run(["git", "tag", tag], repo)
    out = tmp_path / "out.json"
    printed = run([sys.executable, str(ROOT / "benchmarks/dvc_repro.py"), "--repo", str(repo), "--refs", "two", "three",
                   "--json", str(out)], tmp_path)
    got = json.loads(out.read_text())
    assert [(r["ref"], r["stages"], r["ran"], r["processes"]) for r in got] == [("two", 2, 2, 2), ("three", 3, 3, 2)]
    for r in got:
        assert 0 < r["inside_s"] < r["wall_s"] and r["outside_s"] == pytest.approx(r["wall_s"] - r["inside_s"])
    assert f"| two | {got[0]['commit']} | {got[0]['wall_s']:.1f} | 2 | 2 | 2 |" in printed and "| 1.00 |" in printed
