"""prepare: learning, forgetting and general-text datasets (train/test) saved with `datasets`, and
the relabelled control's learning task (control.learn_options: the same rows with other options)."""
import json
import logging

from pipeline import paths
from pipeline.config import control_learn
from pipeline.io import atomic_path, save_dataset, write_json
from pipeline.stage import main, stage
from pipeline.tasks import SPLITS, prepared_rows, prepared_sets

log = logging.getLogger("lwf")


def _dataset(task_ref, seed: int):
    from datasets import Dataset, DatasetDict

    from pipeline.tasks.base import ROW_FIELDS
    from pipeline.stage import UserError

    splits = {}
    for split in SPLITS:
        try:
            rows = prepared_rows(task_ref, seed, split)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise UserError(f"task {task_ref.key!r} ({split}): {e}") from None
        if not rows:
            raise UserError(f"task {task_ref.key!r} has no {split} rows")
        fields = list(ROW_FIELDS) + [k for k in rows[0] if k not in ROW_FIELDS]  # e.g. `choices`
        splits[split] = Dataset.from_dict({k: [r[k] for r in rows] for k in fields})
    log.info("stage prepare: %s: %d train / %d test rows", task_ref.key, len(splits["train"]), len(splits["test"]))
    return DatasetDict(splits)


@stage("prepare")
def run(cfg):
    """Write data/learn, data/forget/<task>, data/general and data/learn_control."""
    sizes = {}
    for kind, ref, seed in prepared_sets(cfg.data):
        where = {"learn": paths.LEARN_DATA, "forget": paths.FORGET_DATA / ref.key, "general": paths.GENERAL_DATA}
        save_dataset(where[kind], ds := _dataset(ref, seed))
        sizes[ref.key] = {k: len(v) for k, v in ds.items()}
    if (ref := control_learn(cfg)) is not None:  # the learning task's seed: the same rows, other options
        log.info("stage prepare: the control learns %s with options %s", ref.task, cfg.control.learn_options)
        save_dataset(paths.LEARN_CONTROL_DATA, ds := _dataset(ref, cfg.data.seed))
        sizes["control"] = {k: len(v) for k, v in ds.items()}
    else:
        with atomic_path(paths.LEARN_CONTROL_DATA, is_dir=True) as tmp:
            (tmp / "skipped.json").write_text(json.dumps({"skipped": "control.learn_options is not set: the control, "
                                                          "if it runs, learns data/learn"}) + "\n")
    write_json(paths.METRICS / "data.json", sizes)


if __name__ == "__main__":
    main(run)
