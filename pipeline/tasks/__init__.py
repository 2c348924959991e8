"""Task registry: name -> Task. Add a task by adding a module and one line here."""
from .base import Task
from .lab import LabConflict, LabGeneral, LabLearn, LabNeutral

TASKS: dict[str, Task] = {t.name: t for t in (LabLearn(), LabConflict(), LabNeutral(), LabGeneral())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
