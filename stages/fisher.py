"""fisher: diagonal Fisher of the base model on the learning task + mean learning gradient."""
import logging
import time

from pipeline import paths
from pipeline.fisher import fisher_and_mean_grad, fisher_summary, save_fisher, true_fisher_rows
from pipeline.io import write_json
from pipeline.models import load_model, trainable_model
from pipeline.stage import load_rows, main, stage

log = logging.getLogger("lwf")


@stage("fisher")
def run(cfg):
    """Write artifacts/fisher.safetensors (fisher.<param>, grad.<param>) and metrics/fisher.json."""
    model, tok = load_model(paths.BASE_MODEL, cfg.model, fsdp=cfg.launch.strategy == "fsdp")
    model = trainable_model(model, cfg.model)  # Fisher over the trainable parameters (LoRA adapters, model.trainable)
    rows = load_rows(paths.LEARN_DATA, "train")[: cfg.fisher.n_samples]
    if cfg.fisher.kind == "true":
        rows = true_fisher_rows(model, tok, rows, cfg.elicit.max_new_tokens, cfg.fisher.seed, cfg.model.add_bos)
    log.info("stage fisher: %s Fisher over %d %s samples (%s engine)", cfg.fisher.kind, len(rows),
             cfg.data.learn.task, cfg.grads.engine)
    t0 = time.time()
    F, gL = fisher_and_mean_grad(model, tok, rows, cfg.data.max_length, cfg.grads.engine, cfg.grads.chunk_size,
                                 cfg.grads.param_regex, cfg.model.add_bos, cfg.grads.embeddings)
    meta = {"n_samples": len(rows), "kind": cfg.fisher.kind, "loss": "per-sequence mean target-token NLL",
            "param_regex": cfg.grads.param_regex or ""}
    save_fisher(paths.FISHER, F, gL, meta)
    write_json(paths.METRICS / "fisher.json", {**meta, **fisher_summary(F, gL), "seconds": round(time.time() - t0, 2)})


if __name__ == "__main__":
    main(run)
