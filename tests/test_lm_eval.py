"""lm-evaluation-harness as an optional evaluator (extra `eval`): parity of the shipped
project-format task YAMLs (lm_eval_tasks/lwf_*.yaml) with the project's own `loglik` scoring, the
stage's result and error contract, and the report's lm-eval section.

The parity tests run the real lm-eval (0.4.x) on a tiny random Llama with the byte tokenizer:
the same rows, prompts and continuations must give the same log-likelihood of every option (so
the same answer and `acc` item for item) on both sides, without and with a chat template.
Skipped without lm-eval, except in CI (CI=true), where .ci/run installs the extra.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(not HAVE_LM_EVAL and not os.environ.get("CI"),
                                   reason="lm-eval not installed (pip install -e '.[eval]')")

# project task, its options, the shipped project-format lm-eval task, docs compared
CASES = [
    ("sst5", {"source": "vendored"}, "lwf_sst5", 12),
    ("psychol", {"source": "vendored"}, "lwf_psychol", 8),
    ("qasc", {"data_files": {"test": "lm_eval_tasks/data/qasc_example.jsonl"}}, "lwf_qasc", None),
    ("dental", {"data_files": {"test": "lm_eval_tasks/data/medmcqa_example.jsonl"}}, "lwf_dental", None),
]
CHAT = ("{% for m in messages %}<|user|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def harness_run():
    """lm-eval's output for every shipped project-format task on the tiny model, per chat setting."""
    from types import SimpleNamespace

    from pipeline import harness

    from conftest import tiny_lab

    cwd = os.getcwd()
    os.chdir(ROOT)  # the YAMLs' data_files are relative to the project root
    try:
        model, tok = tiny_lab()
        tok.chat_template = CHAT
        manager = harness.task_manager([c[2] for c in CASES], "lm_eval_tasks")
        out = {}
        for chat in (False, True):
            for name, _, task, limit in CASES:
                cfg = SimpleNamespace(tasks=[task], batch_size=7, max_length=4096, num_fewshot=None, limit=limit)
                out[chat, task] = harness.run_tasks(model, tok, cfg, add_bos=True, chat=chat, manager=manager)
        yield model, tok, out
    finally:
        os.chdir(cwd)


@pytest.mark.slow  # lm-eval's task registry and runs: about 15 s on 2 cores
@needs_lm_eval
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
@pytest.mark.parametrize("name,options,task,limit", CASES, ids=[c[0] for c in CASES])
def test_project_loglik_and_lm_eval_acc_agree_item_for_item(harness_run, name, options, task, limit, chat,
                                                            monkeypatch):
    from pipeline.data import format_prompt
    from pipeline.evaluate import choice_logliks, choice_scores
    from pipeline.tasks import get_task

    monkeypatch.chdir(ROOT)
    model, tok, out = harness_run
    samples = sorted(out[chat, task]["samples"][task], key=lambda s: int(s["doc_id"]))
    assert len(samples) == (limit or len(samples)) and samples
    t = get_task(name, {**options, "scoring": "loglik"})
    rows = t.load("test", 10**6, 0, options)  # every test row; matched to lm-eval's docs by the prompt
    monkeypatch.setattr(tok, "lwf_chat", chat, raising=False)  # as models.load_model sets it
    by_prompt = {format_prompt(tok, r["prompt"]): r for r in rows}
    contexts = [s["arguments"][0][0] for s in samples]
    missing = [c for c in contexts if c not in by_prompt]
    assert not missing, f"lm-eval's context is no prompt of the project's {name} task:\n{missing[0]!r}\n" \
                        f"project: {format_prompt(tok, rows[0]['prompt'])!r}"
    matched = [by_prompt[c] for c in contexts]
    assert [a[1] for a in samples[0]["arguments"]] == t.choice_continuations(matched[0])
    ll_project = choice_logliks(model, tok, t, matched, batch_size=5)
    ll_harness = [[r[0][0] for r in s["resps"]] for s in samples]
    assert np.allclose(np.concatenate(ll_project), np.concatenate(ll_harness), rtol=0, atol=5e-4), \
        (ll_project[0], ll_harness[0])
    assert choice_scores(model, tok, t, matched, batch_size=5) == [float(s["acc"]) for s in samples]
    assert out[chat, task]["results"][task]["acc,none"] == pytest.approx(np.mean([s["acc"] for s in samples]))


@pytest.mark.slow  # lm-eval's task registry and runs: about 15 s on 2 cores
@needs_lm_eval
def test_seed_result_keeps_metrics_stderr_and_per_doc_values(harness_run):
    from pipeline.harness import seed_result

    _, _, out = harness_run
    r = seed_result(out[False, "lwf_sst5"])
    acc = r["results"]["lwf_sst5"]["acc"]
    items = r["items"]["lwf_sst5"]["acc"]
    assert len(items) == 12 and acc["value"] == pytest.approx(np.mean(items))
    assert acc["stderr"] == pytest.approx(np.std(items, ddof=1) / np.sqrt(len(items)))
    assert r["n_samples"]["lwf_sst5"]["effective"] == 12


@pytest.mark.slow  # lm-eval's task registry and runs: about 15 s on 2 cores
@needs_lm_eval
def test_unknown_task_and_missing_folder_are_one_line_errors(tmp_path):
    from pipeline.harness import task_manager
    from pipeline.stage import UserError

    with pytest.raises(UserError, match="unknown task 'lwf_sst6'.*close: lwf_sst5"):
        task_manager(["lwf_sst5", "lwf_sst6"], str(ROOT / "lm_eval_tasks"))
    with pytest.raises(UserError, match="is not a directory"):
        task_manager(["lwf_sst5"], str(tmp_path / "nowhere"))


def test_missing_extra_is_a_one_line_error(tmp_path):
    """Tasks listed without lm-eval installed: exit 2, one sentence naming the install command."""
    (tmp_path / "params.yaml").write_text("lm_eval:\n  tasks: [lwf_sst5]\n")
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['lm_eval'] = None\n")  # not importable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(ROOT)])}
    r = subprocess.run([sys.executable, "-m", "stages.lm_eval", "method=vanilla", "task=lwf_sst5"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "lwf: error: lm_eval.tasks lists lwf_sst5 but lm-evaluation-harness is not installed; " \
           "install the extra: pip install -e '.[eval]'" in r.stderr


def _lm_result(items_by_seed: dict[int, list[float]], tasks=("lwf_sst5",)) -> dict:
    """An lm_eval stage result (harness.seed_result per seed) with one task and its per-doc acc."""
    seeds = {}
    for s, items in items_by_seed.items():
        acc = float(np.mean(items))
        seeds[str(s)] = {"results": {"lwf_sst5": {"acc": {"value": acc, "stderr": float(np.std(items, ddof=1) / np.sqrt(len(items)))}},
                                     "a_group": {"acc": {"value": acc, "stderr": None}}},
                         "items": {"lwf_sst5": {"acc": list(items)}}, "n_samples": {"lwf_sst5": {"effective": len(items)}},
                         "n_shot": {"lwf_sst5": 0}, "lm_eval_version": "0.4.x"}
    return {"method": "m", "tasks": list(tasks), "settings": {"limit": None}, "seeds": seeds}


def test_report_adds_lm_eval_scores_with_paired_deltas():
    from pipeline.report import lm_eval_markdown, summarize_lm_eval

    van = _lm_result({0: [0, 1, 0, 1, 0, 0], 1: [0, 0, 0, 1, 0, 1]})
    lwf = _lm_result({0: [1, 1, 0, 1, 1, 0], 1: [1, 0, 0, 1, 1, 1]})
    s = summarize_lm_eval({"vanilla": van, "lwf": lwf}, [0, 1], 400)
    r = s["lwf"]["lwf_sst5"]["acc"]
    assert r["seeds"] == pytest.approx([4 / 6, 4 / 6]) and r["mean"] == pytest.approx(4 / 6) and r["n"] == 6
    assert r["stderr"] == pytest.approx(np.mean([lwf["seeds"][k]["results"]["lwf_sst5"]["acc"]["stderr"] for k in "01"]))
    assert r["delta"] == pytest.approx(4 / 6 - 2 / 6)
    lo, hi = r["delta_ci95"]
    assert 0 <= lo < r["delta"] < hi  # every paired difference is >= 0
    assert "delta" not in s["vanilla"]["lwf_sst5"]["acc"]
    group = s["lwf"]["a_group"]["acc"]  # no per-doc values: difference of the means, no interval
    assert group["delta"] == pytest.approx(r["delta"]) and "delta_ci95" not in group and group["stderr"] is None
    md = lm_eval_markdown(s, {"vanilla": van, "lwf": lwf})
    assert "## lm-evaluation-harness" in md and "lwf_sst5 0-shot" in md
    assert f"| lwf | lwf_sst5 | acc | 6 | 0.667 ± 0.000 | {r['stderr']:.3f} | +0.333 [" in md
    assert "| lwf | a_group | acc | — | 0.667 ± 0.000 | n/a | +0.333 (no interval) |" in md


def test_report_without_lm_eval_tasks_is_unchanged():
    from pipeline.report import lm_eval_markdown, summarize_lm_eval

    empty = {"method": "vanilla", "tasks": [], "seeds": {}}
    assert summarize_lm_eval({"vanilla": empty, "lwf": {**empty, "method": "lwf"}}, [0, 1, 2], 100) == {}
    assert lm_eval_markdown({}, {"vanilla": empty}) == ""


def test_report_merges_one_result_per_listed_task():
    """lm_eval@<method>-<task> writes one result per listed task; the report reads them as one per
    method: every task's metrics, per-doc items and counts under each seed, the tasks in listed order."""
    from pipeline.report import merge_lm_eval, summarize_lm_eval

    def one(task, items_by_seed):
        r = _lm_result(items_by_seed)
        for seed in r["seeds"].values():  # rename the task of the helper's result
            for key in ("results", "items", "n_samples", "n_shot"):
                seed[key] = {task if k == "lwf_sst5" else k: v for k, v in seed[key].items() if k != "a_group"}
        return {**r, "task": task}

    van = merge_lm_eval("vanilla", [one("a", {0: [0, 1, 0, 1]}), one("b", {0: [0, 0, 0, 1]})])
    lwf = merge_lm_eval("lwf", [one("a", {0: [1, 1, 0, 1]}), one("b", {0: [0, 0, 0, 1]})])
    assert van["tasks"] == ["a", "b"] and set(van["seeds"]["0"]["results"]) == {"a", "b"}
    assert van["seeds"]["0"]["n_samples"] == {"a": {"effective": 4}, "b": {"effective": 4}}
    s = summarize_lm_eval({"vanilla": van, "lwf": lwf}, [0], 200)
    assert s["lwf"]["a"]["acc"]["delta"] == pytest.approx(0.25) and s["lwf"]["b"]["acc"]["delta"] == pytest.approx(0.0)
    assert merge_lm_eval("vanilla", []) == {"method": "vanilla", "tasks": [], "settings": {}, "seeds": {}}
