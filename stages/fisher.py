"""fisher: diagonal Fisher of the base model on the learning task + mean learning gradient; with
`fisher.at: target` also the Fisher at theta*_L (the optimum stage's model), F_L of `optimum_distance`."""
import logging
import time

from pipeline import dist, paths
from pipeline.fisher import fisher_and_mean_grad, fisher_summary, save_fisher, true_fisher_rows
from pipeline.io import write_json
from pipeline.models import describe, load_model, trainable_model
from pipeline.optimum import load_optimum, load_theta, validation_rows
from pipeline.stage import UserError, load_rows, main, stage

log = logging.getLogger("lwf")


@stage("fisher")
def run(cfg):
    """Write artifacts/fisher.safetensors (fisher.<param>, grad.<param>[, fisher_target.<param>]) and
    metrics/fisher.json."""
    fsdp = cfg.launch.strategy == "fsdp"
    model, tok = load_model(paths.BASE_MODEL, cfg.model, fsdp=fsdp)
    model = trainable_model(model, cfg.model)  # Fisher over the trainable parameters (LoRA adapters, model.trainable)
    learn = load_rows(paths.LEARN_DATA, "train")[: cfg.fisher.n_samples]
    rows = learn
    if cfg.fisher.kind == "true":
        rows = true_fisher_rows(model, tok, learn, cfg.elicit.max_new_tokens, cfg.fisher.seed, cfg.model.add_bos)
    at = {"target": " and at theta*_L", "heldout": " and at theta*_L over held-out validation rows"}.get(cfg.fisher.at, "")
    log.info("stage fisher: %s: %s Fisher over %d %s samples (%s engine), at theta_base%s", describe(model),
             cfg.fisher.kind, len(rows), cfg.data.learn.task, cfg.grads.engine, at)
    t0 = time.time()
    args = (cfg.data.max_length, cfg.grads.engine, cfg.grads.chunk_size, cfg.grads.param_regex, cfg.model.add_bos,
            cfg.grads.embeddings)
    F, gL = fisher_and_mean_grad(model, tok, rows, *args)
    n_base, F_target = len(rows), None
    if cfg.fisher.at == "heldout":  # F_L at theta*_L over held-out learning rows (theta*_L was not fitted to them)
        if not cfg.optimum.n_validation:
            raise UserError("fisher.at: heldout takes F_L over the learning task's validation rows: set "
                            "optimum.n_validation > 0")
        try:
            learn = validation_rows(cfg.data.learn, cfg.optimum.n_validation, cfg.data.seed)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise UserError(f"fisher.at: heldout: {e}; use fisher.at: base or target") from None
    if cfg.fisher.at in ("target", "heldout"):
        _, theta, _ = load_optimum(paths.OPTIMUM)
        if fsdp:  # theta*_L goes into an unsharded model, which is then sharded like the base model
            model = trainable_model(load_model(paths.BASE_MODEL, cfg.model)[0], cfg.model)
            load_theta(model, theta)
            dist.fsdp_wrap(model, next(model.parameters()).device.type)
        else:
            load_theta(model, theta)
        if cfg.fisher.kind == "true":  # y ~ p_theta*(y | x): sampled from the model the Fisher is taken at
            rows = true_fisher_rows(model, tok, learn, cfg.elicit.max_new_tokens, cfg.fisher.seed, cfg.model.add_bos)
        elif cfg.fisher.at == "heldout":
            rows = learn
        log.info("stage fisher: %s: F_L at theta*_L over %d %s rows", describe(model), len(rows), cfg.fisher.at)
        F_target, _ = fisher_and_mean_grad(model, tok, rows, *args)
    meta = {"n_samples": n_base, "kind": cfg.fisher.kind, "loss": "per-sequence mean target-token NLL",
            "param_regex": cfg.grads.param_regex or "", "at": cfg.fisher.at}
    if F_target is not None:  # F_L's rows: the same training rows (target) or the held-out validation rows
        meta["n_samples_at_optimum"] = len(rows)
    save_fisher(paths.FISHER, F, gL, meta, F_target)
    write_json(paths.METRICS / "fisher.json", {**meta, **fisher_summary(F, gL, F_target),
                                               "seconds": round(time.time() - t0, 2)})


if __name__ == "__main__":
    main(run)
