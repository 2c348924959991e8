"""elicit: the base model's own answers to every forgetting-task prompt (its self-knowledge)."""
import logging

import pandas as pd

from pipeline import paths
from pipeline.elicit import generate
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
        task = get_task(ref.task, ref.options)
        rows = load_rows(paths.FORGET_DATA / ref.task, "train")
        log.info("stage elicit: %s: generating for %d prompts x %d", ref.task, len(rows), e.num_return_sequences)
        gens = generate(model, tok, [r["prompt"] for r in rows], e.max_new_tokens, e.batch_size, e.do_sample,
                        e.temperature, e.num_return_sequences, e.seed, cfg.model.add_bos, stop=task.stop)
        each = [r for r in rows for _ in range(e.num_return_sequences)]  # the row of every response
        df = pd.DataFrame(gens)
        df.insert(0, "prompt", [r["prompt"] for r in each])
        df.insert(0, "forget_task", ref.task)
        df["gold"] = [r["answer"] for r in each]
        df["correct"] = [task.score(g["response"], r["answer"], r.get("choices")) if task.has_gold else float("nan")
                         for g, r in zip(gens, each)]
        stats[ref.task] = {"prompts": len(rows), "responses": len(df),
                           "agreement_with_gold": float(df["correct"].mean()) if task.has_gold else None,
                           "empty": int((df["n_tokens"] == 0).sum()), "truncated": int(df["truncated"].sum())}
        if e.only_wrong and task.has_gold:
            df = df[df["correct"] < 1]
            stats[ref.task]["kept_only_wrong"] = len(df)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    if out.empty:
        raise UserError("elicit produced no self-knowledge rows (check data.forget and elicit.only_wrong)")
    out.insert(0, "sample_id", range(len(out)))
    write_parquet(paths.SELF_KNOWLEDGE, out)
    write_json(paths.METRICS / "elicit.json", stats)


if __name__ == "__main__":
    main(run)
