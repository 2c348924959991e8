"""Task registry: name -> Task. Add a task by adding a module, one line here and its name in
pipeline/registry.py (TASK_NAMES: what params validation checks, without importing the tasks)."""
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
    return task.with_options(options or {})
