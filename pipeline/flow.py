"""The same stages as one Prefect flow (`lwf run`), for users who orchestrate with Prefect.

`dvc repro` stays the main path and owns caching: Prefect result persistence is off and task
caching disabled (no second, hidden cache). Tasks take only plain values (stage name, matrix
item) and communicate through the artifact paths on disk, never models or DataFrames.

Prefect state lives in the project (`.prefect/`, git-ignored) unless the user has set
PREFECT_HOME or points PREFECT_API_URL at their own server (`prefect server start` for the UI).
With no server configured Prefect starts a temporary local one for the process (7-15 s here,
paid once per `lwf run`, not once per stage).
"""
from __future__ import annotations

import os
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


def launch_command(name: str, cfg, params_path: str, item: dict) -> list[str] | None:
    """The `python -m pipeline.launch` command that runs stage `name` in its own processes when
    `launch.num_processes > 1` and the stage is one of the distributable five; else None (the
    task calls the stage function in the flow's process)."""
    import sys

    from .launch import DISTRIBUTED

    if cfg.launch.num_processes == 1 or name not in DISTRIBUTED:
        return None
    return [sys.executable, "-m", "pipeline.launch", f"stages.{name}", "--params", str(params_path),
            *(f"{k}={v}" for k, v in item.items())]


def _launched(name: str):
    def run(cmd: list[str]) -> None:
        import subprocess

        subprocess.run(cmd, check=True)

    run.__name__ = f"{name}_launched"
    return run


def build_flow():
    configure_prefect_env()
    from prefect import flow, task

    from pipeline.stage import STAGES
    import stages.base_model  # noqa: F401  (registers the stage functions)
    import stages.confidence  # noqa: F401
    import stages.control  # noqa: F401
    import stages.elicit  # noqa: F401
    import stages.evaluate  # noqa: F401
    import stages.finetune  # noqa: F401
    import stages.fisher  # noqa: F401
    import stages.prepare  # noqa: F401
    import stages.report  # noqa: F401

    tasks = {name: task(fn, name=name, persist_result=False, cache_policy=None, retries=0)
             for name, fn in STAGES.items()}
    from pipeline.launch import DISTRIBUTED

    launched = {name: task(_launched(name), name=name, persist_result=False, cache_policy=None, retries=0)
                for name in DISTRIBUTED}

    @flow(name="lwf", persist_result=False, log_prints=True)
    def lwf_flow(params_path: str = "params.yaml", only: list[str] | None = None):
        """prepare -> base_model -> fisher, elicit -> confidence -> control, finetune x (method, seed)
        -> evaluate x method -> report; each a task that reads and writes the DVC artifact paths."""
        import time

        from pipeline.config import load_config

        cfg = load_config(params_path)
        timings = {}

        def call(name, **item):
            if only and name not in only:
                return
            t0 = time.time()
            run_name = f"{name}{'-' + '-'.join(map(str, item.values())) if item else ''}"
            cmd = launch_command(name, cfg, params_path, item)
            if cmd is None:
                tasks[name].with_options(task_run_name=run_name)(cfg, **item)
            else:  # launch.num_processes > 1: the stage runs under `accelerate launch`, as in dvc.yaml
                launched[name].with_options(task_run_name=run_name)(cmd)
            timings[f"{name}{'@' + '-'.join(map(str, item.values())) if item else ''}"] = round(time.time() - t0, 2)

        call("prepare")
        call("base_model")
        call("fisher")
        call("elicit")
        call("confidence")
        call("control")
        for m in cfg.run.methods:
            for s in cfg.run.seeds:
                call("finetune", method=m, seed=s)
        for m in cfg.run.methods:
            call("evaluate", method=m)
        call("report")
        return timings

    return lwf_flow
