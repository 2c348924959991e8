"""confidence: forgetting confidence of every self-generated sample; selection of D_U."""
import logging

import pandas as pd

from pipeline import paths
from pipeline.confidence import as_rows, confidence_metrics, confidence_scores, select
from pipeline.fisher import load_fisher
from pipeline.io import rounded, write_json, write_parquet
from pipeline.models import describe, load_model, trainable_model
from pipeline.optimum import load_optimum
from pipeline.stage import load_rows, main, stage

log = logging.getLogger("lwf")


@stage("confidence")
def run(cfg):
    """Write artifacts/confidence.parquet and metrics/confidence.json."""
    c = cfg.confidence
    fsdp = cfg.launch.strategy == "fsdp"
    model, tok = load_model(paths.BASE_MODEL, cfg.model, fsdp=fsdp)
    model = trainable_model(model, cfg.model)  # the same seeded adapters / trainable subset as fisher
    # the probe fine-tune trains an unsharded replica under FSDP (the sharded model stays theta_0)
    replica = trainable_model(load_model(paths.BASE_MODEL, cfg.model)[0], cfg.model) if fsdp else None
    device = next(model.parameters()).device
    F, gL, _ = load_fisher(paths.FISHER, device)
    # the published form: F_L where `fisher.at` says, Delta_L = theta*_L - theta_base of the optimum stage
    F_L = load_fisher(paths.FISHER, device, at="target")[0] if cfg.fisher.at in ("target", "heldout") else None
    delta_L, _, _ = load_optimum(paths.OPTIMUM, device)
    sk = pd.read_parquet(paths.SELF_KNOWLEDGE)
    rows = as_rows(sk)
    log.info("stage confidence: %s: scoring %d self-generated samples (%s)", describe(model), len(rows),
             ", ".join(f"{k}: {v}" for k, v in sk["forget_task"].value_counts(sort=False).items()))
    scores = confidence_scores(model, tok, rows, F, gL, cfg.data.max_length, cfg.grads.engine, cfg.grads.chunk_size,
                               cfg.grads.param_regex, c.seed, cfg.model.add_bos,
                               learn_rows=load_rows(paths.LEARN_DATA, "train"), probe=c.probe, probe_replica=replica,
                               embeddings=cfg.grads.embeddings, optimum=delta_L, alpha=c.alpha, fisher_L=F_L)
    df = select(pd.concat([sk.reset_index(drop=True), scores], axis=1), c.score, c.forget_fraction, c.per_task, c.seed,
                c.auroc_positive)
    first = ["sample_id", "forget_task", "prompt", "response", "confidence", "rank", "selected"]
    df = df[first + [col for col in df.columns if col not in first]]
    write_parquet(paths.CONFIDENCE, df)

    metrics = confidence_metrics(df, c)
    write_json(paths.METRICS / "confidence.json", metrics)
    log.info("stage confidence: selected %d of %d; AUROC %s", metrics["n_selected"], len(df), rounded(metrics.get("auroc")))


if __name__ == "__main__":
    main(run)
