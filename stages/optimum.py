"""optimum: theta*_L, the learning task's optimum approximated from D_L by a plain fine-tune from
the base model (params `optimum`); Delta_L = theta*_L - theta_base for the confidence stage."""
import logging
import time

from pipeline import paths
from pipeline.grads import select_params
from pipeline.io import write_json
from pipeline.models import load_model, trainable_model
from pipeline.optimum import optimum_delta, save_optimum, validation_rows
from pipeline.stage import UserError, load_rows, main, stage

log = logging.getLogger("lwf")


@stage("optimum")
def run(cfg):
    """Write artifacts/optimum.safetensors (delta.<param>, theta.<param>) and metrics/optimum.json."""
    o = cfg.optimum
    model, tok = load_model(paths.BASE_MODEL, cfg.model)  # one process (the stage is not launched)
    model = trainable_model(model, cfg.model)  # the same seeded adapters / trainable subset as fisher, confidence
    selected = list(select_params(model, cfg.grads.param_regex, cfg.grads.embeddings))
    if cfg.model.prefix_cache:  # the learning rows' frozen-block states from prefix_train: top blocks only
        from pipeline.prefix_cache import PrefixCacheError, disable_prefix_cache, enable_prefix_cache, load_store

        try:
            enable_prefix_cache(model)
            load_store(model, paths.prefix_store("train"))
        except PrefixCacheError as e:
            raise UserError(str(e)) from None
    rows = load_rows(paths.LEARN_DATA, "train")
    val = None
    if o.n_validation:  # early stopping on the learning task's validation split (never test)
        try:
            val = validation_rows(cfg.data.learn, o.n_validation, cfg.data.seed)
        except (ValueError, KeyError, FileNotFoundError) as e:  # no early stopping: the fixed budget, said loudly
            log.warning("stage optimum: no early stopping (%s): theta*_L = the fixed budget of optimum.steps = %d; "
                        "set optimum.n_validation: 0 to say so in params", e, o.steps)
    log.info("stage optimum: theta*_L = %s %d plain AdamW steps (lr %g, batch %d, warmup %d) on %d %s training rows%s",
             "at most" if val else "", o.steps, o.lr, o.batch_size, o.warmup_steps, len(rows), cfg.data.learn.task,
             f", early-stopped on {len(val)} validation rows" if val else "")
    t0 = time.time()
    delta, theta, stats = optimum_delta(model, tok, rows, o, cfg.data.max_length, cfg.model.add_bos, selected, val)
    if cfg.model.prefix_cache:
        disable_prefix_cache(model)
    meta = {"steps": stats["best_step"], "max_steps": o.steps, "n_validation": len(val or []), "lr": o.lr,
            "batch_size": o.batch_size, "warmup_steps": o.warmup_steps, "seed": o.seed,
            "n_rows": len(rows), "n_delta_params": sum(d.numel() for d in delta.values()),
            "n_theta_params": sum(t.numel() for t in theta.values())}
    save_optimum(paths.OPTIMUM, delta, theta, meta)
    # `steps` = the step kept (meta), `steps_run` = the steps trained (stats)
    write_json(paths.METRICS / "optimum.json", {**stats, **meta, "seconds": round(time.time() - t0, 2)})
    log.info("stage optimum: learning loss %.3f -> %.3f, |Delta_L| = %.4g over %d parameters", stats["first_loss"],
             stats["last_loss"], stats["delta_norm"], meta["n_delta_params"])
    if val is not None:
        log.info("stage optimum: early stopping kept step %d of %d run (validation NLL %.4f -> %.4f)",
                 stats["best_step"], stats["steps_run"], stats["val_nll_base"], stats["val_nll_best"])


if __name__ == "__main__":
    main(run)
