"""Orchestration overheads: a no-op `dvc repro` and a no-op `lwf run` (the Prefect flow whose
tasks are the DVC stages) in a project after a full run, side by side; and Prefect's own cost
(temporary server start once per `lwf run`, then per task), measured with no-op tasks."""
import os
import subprocess
import sys
import time

from _common import machine, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def noop_repro(project, repeat=3):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, capture_output=True, text=True)
        ts.append(time.perf_counter() - t0)
        if "up to date" not in r.stdout + r.stderr:
            return None, "pipeline not up to date: run `dvc repro` first"
    return min(ts), ""


def noop_flow(project):
    """Wall time of a no-op `lwf run` (one process: Prefect start, `dvc repro --dry`, a Skipped task
    run per stage) and how many stages it ran (must be 0)."""
    import json

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run"], cwd=project, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = r.stdout
    if r.returncode or '"wall_s"' not in out:
        return None, f"lwf run failed: {r.stderr[-300:]}"
    res = json.loads(out[out.rindex('{\n  "wall_s"'):].split("\n}\n")[0] + "\n}")
    return wall, f"{len(res['ran'])} stages ran, {len(res['skipped'])} skipped"


PREFECT_PROBE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from pipeline.flow import configure_prefect_env
configure_prefect_env({root!r})
from prefect import flow, task
t_import = time.perf_counter() - t0

@task(persist_result=False, cache_policy=None)
def noop(i):
    return i

@flow(persist_result=False)
def one():
    return noop(0)

@flow(persist_result=False)
def many(n):
    return [noop(i) for i in range(n)]

t1 = time.perf_counter(); one(); t_first = time.perf_counter() - t1
t2 = time.perf_counter(); many(20); t_many = time.perf_counter() - t2
print(json.dumps({{"import": t_import, "first_flow": t_first, "flow_20_tasks": t_many}}))
"""


def prefect_costs():
    import json

    r = subprocess.run([sys.executable, "-c", PREFECT_PROBE.format(root=ROOT)], capture_output=True, text=True,
                       cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(project=None):
    """project: a checkout where `dvc repro` has completed (default: this one; or argv[1])."""
    project = project or (sys.argv[1] if len(sys.argv) > 1 and __name__ == "__main__" else ROOT)
    t_noop, why = noop_repro(project)
    t_flow, flow_note = noop_flow(project) if t_noop is not None else (None, why)
    p = prefect_costs()
    table(f"Orchestration overhead ({machine()})", ["what", "seconds"], [
        ["no-op `dvc repro` (best of 3)", t_noop if t_noop is not None else why],
        [f"no-op `lwf run` ({flow_note})", t_flow if t_flow is not None else flow_note],
        ["import prefect (avoided by the DVC stage commands)", p["import"]],
        ["first flow run in a process (temporary server start + 1 task)", p["first_flow"]],
        ["flow of 20 no-op tasks (server already up)", p["flow_20_tasks"]],
        ["per task", p["flow_20_tasks"] / 20],
    ])


if __name__ == "__main__":
    main()
