"""evaluate@<method>: score every seed's model of one method on held-out data."""
import json
import logging

import pandas as pd

from pipeline import paths
from pipeline.confidence import as_rows, unlearn_set
from pipeline.evaluate import evaluate_model
from pipeline.io import write_json
from pipeline.models import load_model
from pipeline.stage import load_rows, main, stage

log = logging.getLogger("lwf")


def held_out(cfg):
    return (load_rows(paths.LEARN_DATA, "test"),
            {ref.task: load_rows(paths.FORGET_DATA / ref.task, "test") for ref in cfg.data.forget},
            load_rows(paths.GENERAL_DATA, "test"))


def nll_sets(cfg, method: str | None = None) -> dict[str, list[dict]]:
    """The self-generated sets whose NLL every evaluation reports: lwf's D_U (`d_u`: the
    confidence selection), the method's own D_U (`own_d_u`) and each forgetting task's
    self-knowledge (`self/<task>`)."""
    table = pd.read_parquet(paths.CONFIDENCE)
    sets = {"d_u": unlearn_set(table, "high")}
    m = cfg.methods.get(method)
    if m is not None and m.unlearn != "none":
        sets["own_d_u"] = unlearn_set(table, m.selection)
    for task, g in table.groupby("forget_task", sort=True):
        sets[f"self/{task}"] = as_rows(g)
    return sets


@stage("evaluate")
def run(cfg, method: str):
    """Write artifacts/eval/<method>.json: per seed, scores, per-item scores and training stats."""
    learn_test, forget_tests, general = held_out(cfg)
    sets = nll_sets(cfg, method)
    out = {"method": method, "seeds": {}}
    for seed in cfg.run.seeds:
        d = paths.model_dir(method, seed)
        model, tok = load_model(d, cfg.model, fsdp=cfg.launch.strategy == "fsdp")
        res = evaluate_model(model, tok, cfg.data, learn_test, forget_tests, general, cfg.evaluate, cfg.model.add_bos,
                             sets)
        res["train"] = json.loads((d / "train_stats.json").read_text())
        log.info("stage evaluate: %s seed %d: learn %.3f forget %s ppl %.3f NLL of lwf's D_U %.3f", method, seed,
                 res["learn_score"], res["forget_scores"], res["perplexity"], res["d_u_nll"])
        out["seeds"][str(seed)] = res
    write_json(paths.eval_file(method), out)


if __name__ == "__main__":
    main(run)
