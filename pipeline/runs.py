"""What one fine-tuning run reads, built once for the finetune stage and for `lwf tune`: the learning
rows, the method's D_U with the base model's reference NLLs (from the confidence table), and the rows
the graceful guard watches (learning rows and general-text training rows, never test rows)."""
from __future__ import annotations

import logging

from . import paths

log = logging.getLogger("lwf")


def run_rows(cfg, m, learn_data=paths.LEARN_DATA) -> tuple[list[dict], list[dict], list[dict]]:
    """(learning rows, D_U, guard rows) of method `m` (a `MethodConfig`) under `cfg`, from the prepare
    and confidence stages' outputs; `learn_data`: where the learning rows are (the relabelled
    control's own: paths.learn_data)."""
    import pandas as pd

    from .confidence import unlearn_set_with_references
    from .stage import load_rows

    learn = load_rows(learn_data, "train")
    d_u = unlearn_set_with_references(pd.read_parquet(paths.CONFIDENCE), m.selection) \
        if m.unlearn != "none" or m.negate_steps else []
    general = load_rows(paths.GENERAL_DATA, "train")[:m.guard_rows]
    if m.unlearn != "none" and m.guard == "graceful" and len(general) < m.guard_rows:
        log.warning("the graceful guard watches %d learning rows but only %d general-text row(s): "
                    "data.general.n_train is %d (set it to guard_rows, %d, for the guard to see fluency)",
                    min(len(learn), m.guard_rows), len(general), len(general), m.guard_rows)
    return learn, d_u, learn[:m.guard_rows] + general
