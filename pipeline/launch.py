"""`python -m pipeline.launch stages.<name> [args]`: run a stage with the `launch` params.

launch.num_processes == 1 (the default): the stage runs in this process, nothing else happens.
Otherwise the stage is started with `accelerate launch --multi_gpu --num_processes N
--mixed_precision M` (Accelerate's torchrun launcher), run as `python -m accelerate.commands.launch`
by this interpreter (no `accelerate` on PATH needed; without Accelerate installed: one line naming
the `dist` extra, exit code 2). Without a CUDA device the same launcher starts N CPU processes and
the process group uses gloo; `accelerate launch --cpu` would start a single process (Accelerate
runs several CPU processes only through mpirun).
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys

DISTRIBUTED = ("fisher", "elicit", "confidence", "finetune", "evaluate")  # the stages that run under it


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m pipeline.launch stages.<name> [--params P] [key=value ...]", file=sys.stderr)
        raise SystemExit(2)
    module, rest = argv[0], argv[1:]
    from .config import ConfigError, load_config
    from .stage import fail

    params = rest[rest.index("--params") + 1] if "--params" in rest else os.environ.get("LWF_PARAMS", "params.yaml")
    try:
        launch = load_config(params).launch
    except ConfigError as e:
        fail(str(e))
    if launch.num_processes == 1 or os.environ.get("WORLD_SIZE"):
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    if importlib.util.find_spec("accelerate") is None:
        fail(f"launch.num_processes = {launch.num_processes} needs Hugging Face Accelerate, which {sys.executable} "
             'cannot import; install the dist extra: pip install -e ".[dist]"')
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(launch.num_processes), "--num_machines", "1", "--mixed_precision", launch.mixed_precision,
           "--dynamo_backend", "no", "-m", module, *rest]
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
