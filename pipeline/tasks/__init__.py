"""Task registry: name -> Task. Add a task by adding a module and one line here."""
from .base import Task
from .choice import QASC, SST5, Dental, Psychol
from .custom import Custom
from .gsm8k import GSM8K
from .lab import LabConflict, LabCount, LabGeneral, LabLearn, LabNeutral

TASKS: dict[str, Task] = {t.name: t for t in (LabLearn(), LabConflict(), LabNeutral(), LabCount(), LabGeneral(), GSM8K(), QASC(), SST5(), Dental(), Psychol(), Custom())}


def get_task(name: str, options: dict | None = None) -> Task:
    """The registered task `name`, configured by its params `options`."""
    try:
        task = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
    return task.with_options(options or {})
