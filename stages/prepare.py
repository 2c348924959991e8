"""prepare: learning, forgetting and general-text datasets (train/test) saved with `datasets`."""
import logging

from pipeline import paths
from pipeline.io import save_dataset, write_json
from pipeline.stage import main, stage
from pipeline.tasks import get_task

log = logging.getLogger("lwf")


def _dataset(task_ref, seed: int):
    from datasets import Dataset, DatasetDict

    from pipeline.tasks.base import ROW_FIELDS
    from pipeline.stage import UserError

    try:
        task = get_task(task_ref.task, task_ref.options)
    except ValueError as e:
        raise UserError(f"data task {task_ref.task!r}: {e}") from None
    splits = {}
    for i, (split, n) in enumerate((("train", task_ref.n_train), ("test", task_ref.n_test))):
        try:
            rows = task.load(split, n, seed + 17 * i, task_ref.options)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise UserError(f"task {task_ref.task!r} ({split}): {e}") from None
        if not rows:
            raise UserError(f"task {task_ref.task!r} has no {split} rows")
        fields = list(ROW_FIELDS) + [k for k in rows[0] if k not in ROW_FIELDS]  # e.g. `choices`
        splits[split] = Dataset.from_dict({k: [r[k] for r in rows] for k in fields})
    log.info("stage prepare: %s: %d train / %d test rows", task_ref.task, len(splits["train"]), len(splits["test"]))
    return DatasetDict(splits)


@stage("prepare")
def run(cfg):
    """Write data/learn, data/forget/<task>, data/general."""
    d = cfg.data
    sizes = {}
    save_dataset(paths.LEARN_DATA, ds := _dataset(d.learn, d.seed))
    sizes[d.learn.task] = {k: len(v) for k, v in ds.items()}
    for i, ref in enumerate(d.forget):
        save_dataset(paths.FORGET_DATA / ref.task, ds := _dataset(ref, d.seed + 100 * (i + 1)))
        sizes[ref.task] = {k: len(v) for k, v in ds.items()}
    save_dataset(paths.GENERAL_DATA, ds := _dataset(d.general, d.seed + 99))
    sizes[d.general.task] = {k: len(v) for k, v in ds.items()}
    write_json(paths.METRICS / "data.json", sizes)


if __name__ == "__main__":
    main(run)
