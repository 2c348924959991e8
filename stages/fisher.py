"""fisher: diagonal Fisher of the base model on the learning task + mean learning gradient; with
`fisher.at: target` also the Fisher at theta*_L (the optimum stage's model), F_L of `optimum_distance`."""
import logging
import time

from pipeline import dist, paths
from pipeline.fisher import fisher_and_mean_grad, fisher_summary, save_fisher, true_fisher_rows
from pipeline.io import write_json
from pipeline.models import load_model, trainable_model
from pipeline.optimum import load_optimum, load_theta
from pipeline.stage import load_rows, main, stage

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
    log.info("stage fisher: %s Fisher over %d %s samples (%s engine), at theta_base%s", cfg.fisher.kind, len(rows),
             cfg.data.learn.task, cfg.grads.engine, " and at theta*_L" if cfg.fisher.at == "target" else "")
    t0 = time.time()
    args = (cfg.data.max_length, cfg.grads.engine, cfg.grads.chunk_size, cfg.grads.param_regex, cfg.model.add_bos,
            cfg.grads.embeddings)
    F, gL = fisher_and_mean_grad(model, tok, rows, *args)
    F_target = None
    if cfg.fisher.at == "target":
        _, theta, _ = load_optimum(paths.OPTIMUM)
        if fsdp:  # theta*_L goes into an unsharded model, which is then sharded like the base model
            model = trainable_model(load_model(paths.BASE_MODEL, cfg.model)[0], cfg.model)
            load_theta(model, theta)
            dist.fsdp_wrap(model, next(model.parameters()).device.type)
        else:
            load_theta(model, theta)
        if cfg.fisher.kind == "true":  # y ~ p_theta*(y | x): sampled from the model the Fisher is taken at
            rows = true_fisher_rows(model, tok, learn, cfg.elicit.max_new_tokens, cfg.fisher.seed, cfg.model.add_bos)
        F_target, _ = fisher_and_mean_grad(model, tok, rows, *args)
    meta = {"n_samples": len(rows), "kind": cfg.fisher.kind, "loss": "per-sequence mean target-token NLL",
            "param_regex": cfg.grads.param_regex or "", "at": cfg.fisher.at}
    save_fisher(paths.FISHER, F, gL, meta, F_target)
    write_json(paths.METRICS / "fisher.json", {**meta, **fisher_summary(F, gL, F_target),
                                               "seconds": round(time.time() - t0, 2)})


if __name__ == "__main__":
    main(run)
