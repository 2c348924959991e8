"""`lwf run`: the DVC pipeline as one Prefect flow, one task run per DVC stage, DVC deciding.

One execution model: the flow never calls a stage function itself. Each stage of `dvc.yaml`
(matrix items expanded, in the file's order, which is a dependency order) becomes a Prefect task
run named after it. One `dvc repro --dry` first lists the stages that are stale now (it cannot
know which downstream stages will be stale once those have run); a stage that is neither listed
nor after a stage that ran is reported at once as a task run in the state `Skipped`. In a fresh
project, where `--dry` cannot inspect outputs that do not exist yet, every stage is a candidate.
Each candidate stage runs as `dvc repro --single-item <stage>`, so DVC checks its deps, params and outputs again
at that moment (after the upstream stages ran), skips it when nothing it depends on changed, and
otherwise runs the stage's own `cmd` (with `launch.num_processes > 1` that is the
`python -m pipeline.launch` command of `dvc.yaml`) and records it in `dvc.lock`. After any change
`lwf run` therefore reruns exactly what `dvc repro` would, and a no-op `lwf run` runs no stage.

Prefect keeps only run metadata: result persistence is off and task caching disabled (DVC is the
cache). Prefect state lives in the project (`.prefect/`, git-ignored) unless the user has set
PREFECT_HOME or points PREFECT_API_URL at their own server (`prefect server start` for the UI).
With no server configured Prefect starts a temporary local one for the process (7-15 s here).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def configure_prefect_env(root: str | os.PathLike = ".") -> None:
    """Keep Prefect's state inside the project and its results out of any cache (call before import)."""
    if "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_HOME"] = str(Path(root, ".prefect").resolve())
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary server needs 7-15 s to start here (more on a busy machine); Prefect's default
    # wait of 20 s is too tight on 2 cores
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def dvc(*args: str) -> str:
    """Run `python -m dvc ARGS` (this interpreter's DVC); its output, or RuntimeError with it."""
    r = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def ran_stages(output: str) -> list[str]:
    """Stages a `dvc repro` output says it ran (or, with --dry, would run)."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def stage_names() -> list[str]:
    """Every stage of dvc.yaml, matrix and foreach items expanded, in the file's (dependency) order."""
    return [line.split()[0] for line in dvc("stage", "list", "--name-only").splitlines() if line.strip()]


def build_flow():
    configure_prefect_env()
    from prefect import flow, task
    from prefect.states import Completed

    @task(persist_result=False, cache_policy=None, retries=0)
    def stage(name: str, candidate: bool):
        """One DVC stage: `dvc repro --single-item <name>` when DVC may need it, else Skipped."""
        if candidate and ran_stages(dvc("repro", "--single-item", name)):
            return Completed(message="DVC ran the stage")
        return Completed(name="Skipped", message="DVC: nothing it depends on changed")

    @flow(name="lwf", persist_result=False, log_prints=True)
    def lwf_flow(only: list[str] | None = None) -> dict:
        """Every DVC stage as a task run, in dependency order; returns {stage: 'ran' | 'skipped'}."""
        names = [n for n in stage_names() if not only or n.split("@")[0] in only]
        try:
            candidates = set(ran_stages(dvc("repro", "--dry")))
        except RuntimeError:  # a fresh project: --dry cannot look into outputs not made yet
            candidates = set(names)
        out, upstream_ran = {}, False
        for n in names:  # dependency order; a stage after one that ran may be stale too (--dry cannot know)
            st = stage.with_options(task_run_name=n)(n, upstream_ran or n in candidates)  # (a State: the task
            out[n] = "skipped" if st.name == "Skipped" else "ran"                          # returned one)
            upstream_ran = upstream_ran or out[n] == "ran"
        return out

    return lwf_flow
