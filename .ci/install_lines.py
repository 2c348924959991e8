"""Every install line of README.md, run exactly as written in a fresh venv, then the smallest
command that needs what it installed. A green test suite run from `.ci/run`'s all-extras venv
cannot see a documented install that misses a package; this can.

    python .ci/install_lines.py            # run every documented set-up (CI, after the test suite)
    python .ci/install_lines.py --list     # only print the set-ups found and their checks
    python .ci/install_lines.py --only 2   # one of them

What counts as an install line (robust to a rewrite of the README): every line of a fenced shell
block (```bash / sh / shell / console / untagged) that runs `pip install`, the install lines of one
block forming one set-up, and every inline code span in the prose that runs `pip install` (one
set-up each). Of a line, the `pip install` commands run as written (split at `&&`); creating and
activating a venv is what the checker does itself; the rest (`dvc repro`, `pytest`, ...) is what the
set-up is for and is replaced by the smallest command that needs it. A set-up that does not create
its own venv (`python3 -m venv`) adds to the main job's: it runs after the first set-up that does.

The checks, by what a set-up installs (identical set-ups run once):
- the package (`pip install -e .`, any extras): `lwf check` on the shipped params and an import of
  every stage module, in a copy of the repository's files;
- `test`: `pytest --collect-only` of the suite;
- `real`: the `base_model` stage on presets/smollm2_cpu.yaml (converts the packaged GGUF weights);
- `lora`: LoRA adapters on a tiny lab model through `pipeline.models.trainable_model` (peft);
- `dist`: `python -m pipeline.launch` with launch.num_processes 2 starts two processes through
  Accelerate's launcher (a module that prints its rank).
Fresh venvs reuse pip's cache. Exit code 1 naming the set-up and its line when one fails.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
EXTRAS = ("test", "real", "lora", "dist", "eval")


@dataclass
class SetUp:
    where: str                       # "README.md:24" and the line, for messages
    commands: list[str]              # the pip commands, as written
    fresh: bool                      # the line creates its own venv
    base: list[str] = field(default_factory=list)  # the main job's commands it adds to

    def all_commands(self) -> list[str]:
        return [*self.base, *self.commands]

    def extras(self) -> set[str]:
        out = set()
        for cmd in self.all_commands():
            for group in re.findall(r"\.\[([\w,\s-]+)\]", cmd):
                out |= {g.strip() for g in group.split(",")}
        return out

    def installs_package(self) -> bool:
        return any(re.search(r"pip install (.* )?-e ['\"]?\.(\[|['\"\s]|$)", c) for c in self.all_commands())

    def checks(self) -> list[str]:
        if not self.installs_package():
            return []
        return ["package"] + [e for e in EXTRAS if e in self.extras()]


def _segments(line: str) -> list[str]:
    """A shell line cut at `&&`, `||` and `;` outside quotes, its trailing comment dropped: each
    segment's text exactly as written."""
    out, cur, quote, i = [], "", None, 0
    while i < len(line):
        c = line[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (not cur or cur[-1].isspace()):
            break
        elif line.startswith(("&&", "||"), i) or c == ";":
            out.append(cur)
            cur, i = "", i + (1 if c == ";" else 2)
            continue
        cur += c
        i += 1
    return [seg.strip() for seg in out + [cur] if seg.strip()]


def _pip_commands(line: str) -> tuple[list[str], bool]:
    """The `pip install` commands of one shell line, as written, and whether it creates a venv."""
    pip, fresh = [], False
    for seg in _segments(line):
        try:
            words = shlex.split(seg)
        except ValueError:  # an unbalanced quote: not a shell command we can read
            continue
        fresh |= words[1:3] == ["-m", "venv"] and words[0] in ("python", "python3")
        if words[:2] == ["pip", "install"] or (words[1:4] == ["-m", "pip", "install"] and words[0] in ("python", "python3")):
            pip.append(seg)
    return pip, fresh


def extract(text: str, name: str = "README.md") -> list[SetUp]:
    """The documented set-ups of a markdown text, in order (see the module docstring)."""
    setups: list[SetUp] = []
    lines = text.splitlines()
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        if lang not in SHELL_FENCES:
            continue
        joined: list[tuple[int, str]] = []  # backslash continuations joined
        for n, line in body:
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
            else:
                joined.append((n, line.strip().removeprefix("$ ")))
        cmds, fresh, first = [], False, None
        for n, line in joined:
            if "pip install" not in line:
                continue
            pip, f = _pip_commands(line)
            if pip:
                cmds += pip
                fresh |= f
                first = first or (n, line)
        if cmds:
            setups.append(SetUp(f"{name}:{first[0]} (block from line {start}): {first[1]}", cmds, fresh))
    for n, line in prose:
        for span in re.findall(r"`([^`]*pip install[^`]*)`", line):
            pip, f = _pip_commands(span[span.index("pip install"):])
            if pip:
                setups.append(SetUp(f"{name}:{n}: {span}", pip, f))
    main = next((s for s in setups if s.fresh), None)
    unique, seen = [], set()
    for s in setups:
        if not s.fresh and main is not None:
            s.base = list(main.commands)
        key = tuple(s.all_commands())
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


# --- the checks: the smallest command that needs what a set-up installed --------------------------

CHECKS = {
    "package": [
        "lwf check > /dev/null",
        "python -c 'import importlib, pathlib; [importlib.import_module(\"stages.\" + p.stem) "
        "for p in sorted(pathlib.Path(\"stages\").glob(\"*.py\")) if p.stem != \"__init__\"]'",
    ],
    "test": ["python -m pytest --collect-only -q > collect.log && tail -1 collect.log"],
    "real": ["python -m stages.base_model --params presets/smollm2_cpu.yaml && test -f artifacts/base_model/config.json"],
    "lora": ["python -c 'from pipeline.config import LoraConfig, ModelConfig; "
             "from pipeline.models import build_byte_tokenizer, tiny_llama, trainable_model; "
             "m = trainable_model(tiny_llama(len(build_byte_tokenizer()), ModelConfig().lab, max_len=32), "
             "ModelConfig(lora=LoraConfig())); "
             "names = [n for n, p in m.named_parameters() if p.requires_grad]; "
             "assert names and all(\"lora_\" in n for n in names), names'"],
    # the lm-eval task registry finds the project's local-file tasks (lm_eval_tasks/)
    "eval": ["python -c 'from pipeline.harness import require_lm_eval, task_manager; require_lm_eval([\"lwf_sst5\"]); "
             "m = task_manager([\"lwf_sst5\"], \"lm_eval_tasks\"); print(\"lm-eval tasks ok\")'"],
    # JSON is YAML 1.2: the shipped params with launch.num_processes 2; a module that prints its rank,
    # started by pipeline.launch (which needs Accelerate's launcher for two processes)
    "dist": ["python -c 'import json; from pipeline.config import read_params; p = read_params(\"params.yaml\"); "
             "p[\"launch\"][\"num_processes\"] = 2; json.dump(p, open(\"two.yaml\", \"w\"))' "
             "&& echo 'import os; print(\"rank\", os.environ[\"RANK\"], \"of\", os.environ[\"WORLD_SIZE\"])' > lwf_ranks.py "
             "&& python -m pipeline.launch lwf_ranks --params two.yaml > ranks.txt && cat ranks.txt "
             "&& test \"$(grep -c ' of 2$' ranks.txt)\" = 2"],
}


def copy_repo(dst: Path) -> None:
    """The repository's tracked files (or, outside git, its files less caches and venvs) into dst."""
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if r.returncode == 0 and r.stdout:
        for rel in filter(None, r.stdout.decode().split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
    else:
        shutil.copytree(ROOT, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".dvc", "artifacts", "data", "metrics", "reports", "logs", ".lwf"))


def sh(cmd: str, venv: Path, cwd: Path, log) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    t0 = time.time()
    log.write(f"$ {cmd}\n")
    log.flush()
    r = subprocess.run(["bash", "-c", f". {shlex.quote(str(venv / 'bin/activate'))} && {cmd}"], cwd=cwd, env=env,
                       stdout=log, stderr=subprocess.STDOUT)
    return r.returncode, time.time() - t0


def run_setup(s: SetUp, work: Path) -> tuple[bool, str, dict]:
    work.mkdir(parents=True)
    repo, venv = work / "repo", work / "venv"
    repo.mkdir()
    copy_repo(repo)
    times = {}
    with open(work / "log.txt", "w") as log:
        t0 = time.time()
        # (run from a venv's python, `-m venv` still makes a fresh venv on the base interpreter)
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode:
            return False, f"python -m venv failed: {r.stderr[-500:]}", times
        times["venv"] = time.time() - t0
        for cmd in s.all_commands():
            rc, dt = sh(cmd, venv, repo, log)
            times[cmd] = dt
            if rc:
                return False, f"install command failed (exit {rc}): {cmd}", times
        for check in s.checks():
            for cmd in CHECKS[check]:
                rc, dt = sh(cmd, venv, repo, log)
                times[f"check {check}"] = times.get(f"check {check}", 0.0) + dt
                if rc:
                    return False, f"check {check!r} failed (exit {rc}): {cmd}", times
    return True, "ok", times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--list", action="store_true", help="print the set-ups and their checks, run nothing")
    p.add_argument("--only", type=int, nargs="+", help="run only these set-ups (their numbers in --list)")
    p.add_argument("--keep", help="keep the venvs, copies and logs in this folder (default: a temporary one, removed)")
    a = p.parse_args(argv)
    setups = extract(Path(a.readme).read_text(), Path(a.readme).name)
    for i, s in enumerate(setups):
        print(f"[{i}] {s.where}\n    runs: {' && '.join(s.all_commands())}\n    checks: {', '.join(s.checks()) or 'none'}")
    if a.list:
        return 0
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="lwf-install-"))
    failed, t_all = [], time.time()
    chosen = [(i, s) for i, s in enumerate(setups) if a.only is None or i in a.only]
    try:
        for i, s in chosen:
            ok, why, times = run_setup(s, base / f"setup{i}")
            total = sum(times.values())
            print(f"[{i}] {'ok' if ok else 'FAILED'} in {total:.0f} s ({', '.join(f'{k}: {v:.0f} s' for k, v in times.items())})")
            if not ok:
                log = (base / f"setup{i}" / "log.txt").read_text()
                print(f"    {why}\n    log tail:\n" + "\n".join("      " + ln for ln in log.splitlines()[-25:]))
                failed.append(s.where)
            sys.stdout.flush()
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"install lines: {len(chosen) - len(failed)} passed, {len(failed)} failed in {time.time() - t_all:.0f} s")
    for w in failed:
        print(f"  failed: {w}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
