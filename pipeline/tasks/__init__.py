"""Task registry: name -> Task. Add a task by adding a module, one line here and its name in
pipeline/registry.py (TASK_NAMES: what params validation checks, without importing the tasks)."""
from dataclasses import replace

from .base import Task
from .choice import QASC, SST5, Dental, Psychol
from .custom import Custom
from .gsm8k import GSM8K
from .lab import LabConflict, LabCount, LabGeneral, LabLearn, LabNeutral
from ..registry import TASK_NAMES

TASKS: dict[str, Task] = {t.name: t for t in (LabLearn(), LabConflict(), LabNeutral(), LabCount(), LabGeneral(), GSM8K(), QASC(), SST5(), Dental(), Psychol(), Custom())}
if set(TASKS) != set(TASK_NAMES):
    raise ImportError(f"pipeline/registry.py TASK_NAMES {sorted(TASK_NAMES)} != the tasks implemented {sorted(TASKS)}")


def get_task(name: str, options: dict | None = None) -> Task:
    """The registered task `name`, configured by its params `options`."""
    try:
        task = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
    task = task.with_options(options or {})
    if (options or {}).get("name"):  # what the report calls it (params: the task's options.name)
        task = replace(task, name=options["name"])
    return task


SPLITS = ("train", "test")  # the splits the prepare stage writes, drawn with seed + 17 * their index


def prepared_sets(data) -> list[tuple[str, object, int]]:
    """The datasets the prepare stage writes from params `data`, as (kind, task reference, seed):
    the learning task, each forgetting task and the general text. Studies that need the same rows
    draw them with `prepared_rows` rather than copy these seeds."""
    return [("learn", data.learn, data.seed),
            *[("forget", ref, data.seed + 100 * (i + 1)) for i, ref in enumerate(data.forget)],
            ("general", data.general, data.seed + 99)]


def prepared_rows(ref, seed: int, split: str) -> list[dict]:
    """The rows of `split` the prepare stage writes for a task reference drawn with `seed`."""
    n = ref.n_train if split == "train" else ref.n_test
    return get_task(ref.task, ref.options).load(split, n, seed + 17 * SPLITS.index(split), ref.options)
