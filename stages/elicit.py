"""elicit: the base model's own answers to every forgetting-task prompt (its self-knowledge)."""
import logging

import pandas as pd

from pipeline import paths
from pipeline.elicit import elicit_task
from pipeline.io import write_json, write_parquet
from pipeline.models import load_model
from pipeline.stage import UserError, load_rows, main, stage
from pipeline.tasks import get_task

log = logging.getLogger("lwf")


@stage("elicit")
def run(cfg):
    """Write artifacts/self_knowledge.parquet and metrics/elicit.json."""
    e = cfg.elicit
    model, tok = load_model(paths.BASE_MODEL, cfg.model, fsdp=cfg.launch.strategy == "fsdp")
    frames, stats = [], {}
    for ref in cfg.data.forget:
        df, stats[ref.key] = elicit_task(model, tok, get_task(ref.task, ref.options),
                                          load_rows(paths.FORGET_DATA / ref.key, "train"), e, cfg.model.add_bos)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    if out.empty:
        raise UserError("elicit produced no self-knowledge rows (check data.forget and elicit.only_wrong)")
    out.insert(0, "sample_id", range(len(out)))
    write_parquet(paths.SELF_KNOWLEDGE, out)
    write_json(paths.METRICS / "elicit.json", stats)


if __name__ == "__main__":
    main(run)
