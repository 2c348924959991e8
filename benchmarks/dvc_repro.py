"""The default `dvc repro` from scratch, side by side for several commits: each ref is cloned into
a temporary folder (a fresh clone: no DVC cache, no outputs) and reproduced with its own
params.yaml; prints per ref the wall time, the stages in the pipeline and the stages run, the
processes its stage commands started, the time spent inside them and the rest (DVC itself:
hashing, caching, rewriting dvc.lock after every stage), and the wall-time ratio to the first ref.

    python benchmarks/dvc_repro.py --refs main tests             # the default dvc repro of each
    python benchmarks/dvc_repro.py --refs main tests --quick     # a smoke run: 1 seed, 3 methods, tiny budgets

A process is counted by a `python` wrapper first on PATH that logs each start and end and runs this
interpreter (dvc.yaml's commands are `python -m ...`); the clones share nothing, and the refs run
one after the other on the same machine (a busy machine slows each one: compare ratios, and rerun
when the machine is quiet).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --quick: keys set in the clone's params.yaml where they exist (a ref without one keeps its own)
QUICK = {("run", "seeds"): [0], ("run", "methods"): ["base", "vanilla", "lwf"],
         ("model", "lab", "pretrain_steps"): 40, ("finetune", "max_steps"): 4, ("optimum", "steps"): 4,
         ("fisher", "n_samples"): 16, ("report", "bootstrap"): 100, ("control", "enabled"): False}
WRAPPER = """#!/bin/sh
# counts the stage processes: one line when a `python` starts, one when it ends (seconds since the epoch)
log={log}
echo "start $$ $(date +%s.%N) $*" >> "$log"
{python} "$@"
rc=$?
echo "end $$ $(date +%s.%N) $rc" >> "$log"
exit $rc
"""


def sh(cmd: list[str], cwd: Path, env: dict | None = None, log=None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if log is not None:
        log.write(f"$ {shlex.join(cmd)}\n{r.stdout}\n")
    if r.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {r.returncode}) in {cwd}:\n{r.stdout[-3000:]}")
    return r


def set_quick(params: Path) -> list[str]:
    """Apply QUICK to a params file in place (ruamel: comments kept); the keys it set."""
    from ruamel.yaml import YAML

    yaml = YAML()
    raw = yaml.load(params.read_text())
    done = []
    for keys, value in QUICK.items():
        node = raw
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = value
            done.append(".".join(keys))
    with open(params, "w") as f:
        yaml.dump(raw, f)
    return done


def processes(log: Path) -> tuple[int, float]:
    """(processes started, seconds spent inside them) from the wrapper's log."""
    starts, inside = {}, 0.0
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, pid, t = line.split(" ", 3)[:3]
        if kind == "start":
            starts[pid] = float(t)
        elif pid in starts:
            inside += float(t) - starts.pop(pid)
    n = sum(1 for line in log.read_text().splitlines() if line.startswith("start ")) if log.exists() else 0
    return n, inside


def measure(ref: str, repo: Path, work: Path, quick: bool) -> dict:
    sha = sh(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], repo).stdout.strip()
    clone = work / f"clone-{ref.replace('/', '_')}"
    with open(work / f"{clone.name}.log", "w") as log:
        sh(["git", "clone", "--quiet", "--no-checkout", str(repo), str(clone)], work, log=log)
        sh(["git", "checkout", "--quiet", "--detach", sha], clone, log=log)
        quick_keys = set_quick(clone / "params.yaml") if quick else []
        bin_dir = work / f"bin-{clone.name}"
        bin_dir.mkdir()
        proc_log = work / f"{clone.name}.processes"
        (bin_dir / "python").write_text(WRAPPER.format(log=shlex.quote(str(proc_log)), python=shlex.quote(sys.executable)))
        (bin_dir / "python").chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # the clone's own code: `python -m stages.x` imports it from the working directory first
        env.update(PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]),
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DVC_NO_ANALYTICS="1")
        stages = [s for s in sh([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], clone, env).stdout.split()
                  if s and not s.startswith(("WARNING", "ERROR"))]
        t0 = time.perf_counter()
        out = sh([sys.executable, "-m", "dvc", "repro"], clone, env, log=log).stdout
        wall = time.perf_counter() - t0
    n_proc, inside = processes(proc_log)
    ran = [ln.split("'")[1] for ln in out.splitlines() if ln.startswith("Running stage '")]
    return {"ref": ref, "commit": sha[:12], "wall_s": wall, "stages": len(stages), "ran": len(ran),
            "processes": n_proc, "inside_s": inside, "outside_s": wall - inside, "quick": quick_keys}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", nargs="+", default=["HEAD"], help="commits, branches or tags of --repo (first = baseline)")
    ap.add_argument("--repo", default=str(ROOT), help="the git repository to clone (default: this one)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed, 3 methods: checks the script runs")
    ap.add_argument("--keep", help="keep the clones and logs in this folder (default: a temporary one, removed)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="lwf-dvc-repro-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for ref in a.refs:
            results.append(measure(ref, Path(a.repo), work, a.quick))
            print(f"{ref}: {results[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    import platform

    title = "`dvc repro` in a fresh clone" + (" (--quick: " + ", ".join(results[0]["quick"]) + ")" if a.quick else "")
    print(f"\n{title}; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    print("| ref | commit | wall (s) | stages | stages run | processes | inside them (s) | rest: DVC (s) | wall / first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['ref']} | {r['commit']} | {r['wall_s']:.1f} | {r['stages']} | {r['ran']} | {r['processes']} | "
              f"{r['inside_s']:.1f} | {r['outside_s']:.1f} | {r['wall_s'] / results[0]['wall_s']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
