"""Orchestration overheads: a no-op `dvc repro` and a no-op `lwf run` (the Prefect flow whose
tasks are the DVC stages) in a project after a full run, side by side; and Prefect's own cost
(temporary server start once per `lwf run`, then per task), measured with no-op tasks.

    python benchmarks/pipeline_overhead.py [PROJECT_DIR_WITH_A_COMPLETED_REPRO] [--quick]

Without a project, or where `dvc status` finds it not up to date, only Prefect's costs are measured
(a `dvc repro` there would run the pipeline). --quick: one no-op `dvc repro`, a flow of 2 tasks.
"""
import os
import subprocess
import sys
import time

from _common import machine, parser, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def up_to_date(project) -> bool:
    r = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True)
    return r.returncode == 0 and "up to date" in r.stdout + r.stderr


def noop_repro(project, repeat=3):
    if project is None or not up_to_date(project):
        return None, "no project with a completed `dvc repro` given" if project is None else \
            "pipeline not up to date: run `dvc repro` first"
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
t2 = time.perf_counter(); many({n}); t_many = time.perf_counter() - t2
print(json.dumps({{"import": t_import, "first_flow": t_first, "flow_tasks": t_many}}))
"""


def prefect_costs(n_tasks: int):
    import json

    r = subprocess.run([sys.executable, "-c", PREFECT_PROBE.format(root=ROOT, n=n_tasks)], capture_output=True,
                       text=True, cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("project", nargs="?", help="a checkout where `dvc repro` has completed")
    a = ap.parse_args(argv)
    repeat, n_tasks = (1, 2) if a.quick else (3, 20)
    t_noop, why = noop_repro(a.project, repeat)
    t_flow, flow_note = noop_flow(a.project) if t_noop is not None else (None, why)
    p = prefect_costs(n_tasks)
    table(f"Orchestration overhead ({machine()})", ["what", "seconds"], [
        [f"no-op `dvc repro` (best of {repeat})", t_noop if t_noop is not None else why],
        [f"no-op `lwf run` ({flow_note})", t_flow if t_flow is not None else flow_note],
        ["import prefect (avoided by the DVC stage commands)", p["import"]],
        ["first flow run in a process (temporary server start + 1 task)", p["first_flow"]],
        [f"flow of {n_tasks} no-op tasks (server already up)", p["flow_tasks"]],
        ["per task", p["flow_tasks"] / n_tasks],
    ])


if __name__ == "__main__":
    main()
