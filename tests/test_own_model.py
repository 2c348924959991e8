"""Your own model and data: the `custom` task's options, `lwf init` on the shipped example
(docs/examples/own_model: a tiny GPT-NeoX and JSONL files in their own field names), `lwf check`
catching what the stages would fail on, one line naming the key, and (e2e) the example through
`dvc repro` with its files as DVC dependencies."""
import json
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs/examples/own_model"
E = "docs/examples/own_model"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- the custom task -------------------------------------------------------------------------------

def test_template_placeholders_are_the_records_fields(tmp_path):
    from pipeline.tasks import get_task

    f = write_jsonl(tmp_path / "a.jsonl", [{"q": f"x{i}", "ctx": "c", "a": str(i)} for i in range(5)])
    opts = {"data_files": {"train": f, "test": f}, "prompt_field": "q", "target_field": "a",
            "prompt_template": "{ctx}|{prompt}|{q}:"}
    row = get_task("custom", opts).load("train", 1, 0, opts)[0]
    assert row["prompt"].startswith("c|x") and row["prompt"].endswith(":") and row["target"] == " " + row["answer"]
    bad = {**opts, "prompt_template": "Q: {question}"}
    with pytest.raises(ValueError, match=r"placeholder \{question\} is not a field of the data"):
        get_task("custom", bad).load("train", 1, 0, bad)


def test_missing_splits_are_carved_disjoint_from_the_file(tmp_path):
    from pipeline.tasks import get_task

    f = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}", "target": str(i)} for i in range(50)])
    opts = {"data_files": {"train": f}, "carve": {"validation": 0.1}}
    task = get_task("custom", opts)
    parts = {s: {r["prompt"] for r in task.load(s, 1000, 0, opts)} for s in ("train", "test", "validation")}
    assert task.has_validation and [len(parts[s]) for s in ("train", "test", "validation")] == [35, 10, 5]
    assert not (parts["train"] & parts["test"] or parts["train"] & parts["validation"] or parts["test"] & parts["validation"])
    general = {"data_files": {"test": f}, "prompt_field": "prompt", "target_field": "prompt", "prompt_template": "",
               "metric": "none"}  # general text from a test file alone: guard rows carved from it
    g = get_task("custom", general)
    assert len(g.load("train", 1000, 0, general)) == 10 and len(g.load("test", 1000, 0, general)) == 40


def test_multiple_choice_in_own_fields_with_loglik_scoring(tmp_path):
    from pipeline.tasks import get_task

    for gold in (1, "B", "4", "four"):  # an index, a letter, an option's text; else a clear error
        f = write_jsonl(tmp_path / "mc.jsonl", [{"q": "2+2?", "opts": ["3", "4", "5"], "gold": gold}] * 2)
        opts = {"data_files": {"train": f, "test": f}, "prompt_field": "q", "target_field": "gold",
                "choices_field": "opts", "scoring": "loglik", "name": "sums"}
        task = get_task("custom", opts)
        if gold == "four":
            with pytest.raises(ValueError, match="is not one of the 3 options"):
                task.load("test", 10, 0, opts)
            continue
        row = task.load("test", 10, 0, opts)[0]
        assert task.scoring == "loglik" and task.name == "sums"
        assert row["answer"] == "B" and row["choices"] == ["3", "4", "5"] and task.gold_index(row) == 1
        assert "A. 3" in row["prompt"] and row["prompt"].endswith("Answer:")


def test_two_custom_forgetting_tasks_need_and_get_their_own_names():
    from pipeline.config import ConfigError, parse_config

    t = {"task": "custom", "options": {"data_files": {"train": "a.jsonl"}}}
    with pytest.raises(ConfigError, match="give each its own options.name"):
        parse_config({"data": {"forget": [t, t]}})
    named = [{**t, "options": {**t["options"], "name": n}} for n in ("towns", "jobs")]
    cfg = parse_config({"data": {"forget": named}, "confidence": {"auroc_positive": ["towns"], "auroc_negative": []}})
    assert [r.key for r in cfg.data.forget] == ["towns", "jobs"]


# --- lwf init and lwf check on the shipped example -------------------------------------------------

def init_args(params, **over):
    a = dict(model=f"{E}/model", learn=f"{E}/data/counting_train.jsonl,{E}/data/counting_test.jsonl",
             forget=[f"{E}/data/towns.jsonl"], general=f"{E}/data/notes.jsonl", forget_template="Q: {query}\\nA:",
             learn_prompt=None, learn_target=None, learn_template=None, learn_metric=None, learn_choices=None,
             learn_name=None, forget_prompt=None, forget_target=None, forget_metric=None, forget_choices=None,
             general_field=None, seeds="0", methods="base,vanilla,lwf", steps=None, lr=None, params=str(params))
    return Namespace(**{**a, **over})


@pytest.fixture(scope="module")
def init_params(tmp_path_factory):
    """params.yaml as `lwf init` writes it for the example (run from the project root)."""
    import os

    from pipeline.init import write_init

    out = tmp_path_factory.mktemp("init") / "params.yaml"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        why = write_init(init_args(out))
    finally:
        os.chdir(cwd)
    return yaml.safe_load(out.read_text()), why


def problems_of(raw, tmp_path, monkeypatch):
    from pipeline.checks import problems

    monkeypatch.chdir(ROOT)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return problems(p, ROOT)


def test_init_derives_the_settings_from_the_model_and_the_data(init_params, tmp_path, monkeypatch):
    raw, why = init_params
    d = raw["data"]
    assert raw["model"]["chat_template"] is True and raw["model"]["files"] == f"{E}/model"
    assert d["files"] == f"{E}/data" and d["learn"]["options"]["name"] == "counting"
    assert d["forget"][0]["options"]["prompt_template"] == "Q: {query}\nA:"
    assert (d["learn"]["n_train"], d["learn"]["n_test"], d["forget"][0]["n_test"], d["general"]["n_train"]) == (99, 40, 13, 12)
    assert d["max_length"] % 8 == 0 and d["max_length"] < 64
    assert raw["optimum"]["steps"] == 2 * raw["finetune"]["max_steps"] and raw["optimum"]["n_validation"] == 11
    assert raw["unlearning"]["guard"] == "graceful" and raw["control"]["enabled"] is False
    assert raw["lm_eval"]["include_path"] == "lm_eval_tasks"  # every key dvc.yaml reads
    assert any(line.startswith("data.max_length") for line in why)
    assert problems_of(raw, tmp_path, monkeypatch) == []


def test_check_fails_with_one_line_naming_the_key(init_params, tmp_path, monkeypatch):
    import copy

    raw = init_params[0]
    # a row longer than data.max_length: one long question in a copy of the learning file
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE / "data", data)
    with open(data / "counting_train.jsonl", "a") as f:
        f.write(json.dumps({"question": "What comes after " + "9" * 200 + "?", "reply": "no"}) + "\n")
    long = copy.deepcopy(raw)
    long["data"]["files"] = str(data)
    for ref in (long["data"]["learn"], *long["data"]["forget"], long["data"]["general"]):
        ref["options"]["data_files"] = {k: str(data / Path(v).name) for k, v in ref["options"]["data_files"].items()}
    long["data"]["learn"]["n_train"] = 1000
    got = problems_of(long, tmp_path, monkeypatch)
    assert len(got) == 1 and got[0].startswith("data.max_length = ") and "data.learn validation rows" in got[0], got

    missing = copy.deepcopy(raw)
    del missing["lm_eval"]["include_path"]
    got = problems_of(missing, tmp_path, monkeypatch)
    assert len(got) == 1 and got[0].startswith("lm_eval.include_path: missing"), got

    placeholder = copy.deepcopy(raw)
    placeholder["data"]["forget"][0]["options"]["prompt_template"] = "Q: {q}"
    got = problems_of(placeholder, tmp_path, monkeypatch)
    assert len(got) == 1 and got[0].startswith("data.forget[0].options.prompt_template: placeholder {q}"), got

    short = copy.deepcopy(raw)
    short["evaluate"]["max_new_tokens"] = 1
    got = problems_of(short, tmp_path, monkeypatch)
    assert got and all(g.startswith("evaluate.max_new_tokens = 1") for g in got), got


def test_lwf_check_exits_non_zero_with_the_problem_on_stderr(init_params, tmp_path):
    import copy

    raw = copy.deepcopy(init_params[0])
    raw["data"]["max_length"] = 8
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "check", "--params", str(p)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lwf check: ")]
    assert any(ln.startswith("lwf check: data.max_length = 8:") for ln in lines) and "nothing was run" in lines[-1]


# --- end to end: the README's commands on the shipped example --------------------------------------

README_INIT = [sys.executable, "-m", "pipeline.cli", "init", "--model", f"{E}/model",
               "--learn", f"{E}/data/counting_train.jsonl,{E}/data/counting_test.jsonl",
               "--forget", f"{E}/data/towns.jsonl", "--forget-template", "Q: {query}\\nA:",
               "--general", f"{E}/data/notes.jsonl", "--seeds", "0", "--methods", "base,vanilla,lwf"]


@pytest.mark.e2e
def test_own_model_example_runs_tunes_and_its_files_are_dvc_deps(tmp_path):
    from pipeline.config import load_config
    from test_e2e import dvc, run

    proj = tmp_path / "proj"
    for name in ("pipeline", "stages", "lm_eval_tasks"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(EXAMPLE, proj / E, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    run(["git", "init", "-q"], proj)
    run([*dvc(), "init", "-q"], proj)
    run(README_INIT, proj)
    run([sys.executable, "-m", "pipeline.cli", "check"], proj)
    run([*dvc(), "repro"], proj, timeout=1800)
    summary = json.loads((proj / "metrics/summary.json").read_text())
    assert {"base", "vanilla", "lwf"} <= set(summary)
    ev = json.loads((proj / "artifacts/eval/lwf.json").read_text())["seeds"]["0"]
    assert set(ev["forget_scores"]) == {"towns"}  # the forgetting task by its own name

    def stale():
        return sorted(json.loads(run([*dvc(), "status", "--json"], proj).strip().splitlines()[-1] or "{}"))

    assert stale() == []
    towns = proj / E / "data/towns.jsonl"
    keep = towns.read_text()
    lines = keep.splitlines(keepends=True)
    towns.write_text("".join(lines[:2] + ['{"query": "Where does Nobody live?", "response": "Ely"}\n'] + lines[3:]))
    assert stale() == ["fisher", "optimum", "prepare"]  # the stages that read the data files
    towns.write_text(keep)
    config = proj / E / "model/config.json"
    keep = config.read_text()
    config.write_text(keep.replace('"hidden_act"', ' "hidden_act"'))
    assert stale() == ["base_model"]  # the stage that reads the model folder
    config.write_text(keep)
    assert stale() == []

    # steps and rates chosen on the example task's validation split, written into params.yaml: the
    # fine-tunes (and what follows them) are stale, nothing before them
    run([sys.executable, "-m", "pipeline.cli", "tune", "--steps", "4", "--at", "2", "--seeds", "0", "--n-val", "8",
         "--lrs", "0.001", "0.003", "--write"], proj)
    choice = json.loads((proj / "tune/choice.json").read_text())
    cfg = load_config(str(proj / "params.yaml"))
    assert (cfg.finetune.lr, cfg.finetune.max_steps) == (choice["finetune.lr"], choice["finetune.max_steps"])
    assert choice["finetune.lr"] in (0.001, 0.003) and choice["finetune.max_steps"] in (2, 4)
    assert {"finetune@vanilla", "finetune@lwf"} <= set(stale()) and "prepare" not in stale()


# --- the Python API page ---------------------------------------------------------------------------

def test_the_api_page_example_runs(monkeypatch, capsys):
    """docs/api.md's block, as written, from the project root: every step without DVC; unlearning
    raised D_U's NLL."""
    import re

    block = re.search(r"```python\n(.*?)```", (ROOT / "docs/api.md").read_text(), re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "docs/api.md", "exec"), scope)
    assert scope["stats"]["unlearn_steps_taken"] >= 1 and scope["after"] > scope["before"]
    assert set(scope["table"]["forget_task"]) == {"towns"} and len(scope["d_u"]) == 8
    assert "rows unlearned" in capsys.readouterr().out


# --- lwf init: the dtype and trainable parameters that fit the machine ------------------------------

def test_init_trains_every_parameter_when_it_fits_else_the_top_blocks_that_do(tmp_path, monkeypatch):
    import re

    import pipeline.init as init
    from conftest import tiny_lab
    from pipeline.config import ConfigError

    model, tok = tiny_lab(layers=4)
    model.save_pretrained(tmp_path / "m")
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values())

    def memory_for(trainable: int) -> int:  # the machine on which exactly this many trainable weights fit
        return int(init.training_bytes(total, trainable, 4) / 0.6) + 1

    monkeypatch.setattr(init, "machine_memory", lambda: ("cpu", memory_for(total)))
    fit, why = init.fit_machine(str(tmp_path / "m"))
    assert fit == {"dtype": "float32"} and "every parameter" in why
    top2 = [n for n in sizes if re.match(r"model\.layers\.[23]\.", n)]
    monkeypatch.setattr(init, "machine_memory", lambda: ("cpu", memory_for(sum(sizes[n] for n in top2))))
    fit, why = init.fit_machine(str(tmp_path / "m"))
    assert [n for n in sizes if re.search(fit["trainable"], n)] == top2 and "top 2 of 4 blocks" in why
    top1 = sum(sizes[n] for n in sizes if n.startswith("model.layers.3."))
    monkeypatch.setattr(init, "machine_memory", lambda: ("cpu", memory_for(top1) - 2))
    with pytest.raises(ConfigError, match="not even its top block fits"):
        init.fit_machine(str(tmp_path / "m"))
