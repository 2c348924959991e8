"""confidence: forgetting confidence of every self-generated sample; selection of D_U."""
import logging

import pandas as pd

from pipeline import paths
from pipeline.confidence import SELECTIONS, as_rows, auroc, confidence_scores, select
from pipeline.config import SCORES
from pipeline.fisher import load_fisher
from pipeline.io import write_json, write_parquet
from pipeline.models import load_model, with_lora
from pipeline.stage import load_rows, main, stage

log = logging.getLogger("lwf")


@stage("confidence")
def run(cfg):
    """Write artifacts/confidence.parquet and metrics/confidence.json."""
    c = cfg.confidence
    model, tok = load_model(paths.BASE_MODEL, cfg.model, fsdp=cfg.launch.strategy == "fsdp")
    model = with_lora(model, cfg.model.lora)  # the same seeded adapters as the fisher stage
    device = next(model.parameters()).device
    F, gL, _ = load_fisher(paths.FISHER, device)
    sk = pd.read_parquet(paths.SELF_KNOWLEDGE)
    rows = as_rows(sk)
    log.info("stage confidence: scoring %d self-generated samples (%s)", len(rows),
             ", ".join(f"{k}: {v}" for k, v in sk["forget_task"].value_counts(sort=False).items()))
    scores = confidence_scores(model, tok, rows, F, gL, cfg.data.max_length, cfg.grads.engine, cfg.grads.chunk_size,
                               cfg.grads.param_regex, c.seed, cfg.model.add_bos,
                               learn_rows=load_rows(paths.LEARN_DATA, "train"), probe=c.probe)
    df = select(pd.concat([sk.reset_index(drop=True), scores], axis=1), c.score, c.forget_fraction, c.per_task, c.seed,
                c.auroc_positive)
    first = ["sample_id", "forget_task", "prompt", "response", "confidence", "rank", "selected"]
    df = df[first + [col for col in df.columns if col not in first]]
    write_parquet(paths.CONFIDENCE, df)

    metrics = {"score": c.score, "n_samples": len(df), "n_selected": int(df["selected"].sum()),
               "selected_by_task": {k: int(v) for k, v in df.groupby("forget_task")["selected"].sum().items()},
               "median_by_task": {k: {"confidence": float(g["confidence"].median()), "grad_norm": float(g["grad_norm"].median())}
                                  for k, g in df.groupby("forget_task")}}
    pos, neg = set(c.auroc_positive), set(c.auroc_negative)
    sub = df[df["forget_task"].isin(pos | neg)]
    if pos and neg and not sub.empty:
        y = sub["forget_task"].isin(pos).to_numpy()
        metrics["auroc"] = {**{s: auroc(sub[f"score_{s}"], y) for s in SCORES}, "grad_norm": auroc(sub["grad_norm"], y)}
        metrics["auroc_by_negative"] = {}
        for neg_task in sorted(neg):
            one = df[df["forget_task"].isin(pos | {neg_task})]
            yy = one["forget_task"].isin(pos).to_numpy()
            metrics["auroc_by_negative"][neg_task] = {s: auroc(one[col], yy) for s, col in
                                                      [(s, f"score_{s}") for s in SCORES] + [("grad_norm", "grad_norm")]}
        metrics["auroc_positive"], metrics["auroc_negative"] = sorted(pos), sorted(neg)
        for name, col in SELECTIONS.items():
            metrics.setdefault("positive_share_of_selection", {})[name] = float(
                df.loc[df[col], "forget_task"].isin(pos).mean())
    write_json(paths.METRICS / "confidence.json", metrics)
    log.info("stage confidence: selected %d of %d; AUROC %s", metrics["n_selected"], len(df), metrics.get("auroc"))


if __name__ == "__main__":
    main(run)
