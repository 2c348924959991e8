"""finetune@<method>: fine-tune the base model on the learning task with the method's unlearning
schedule, once per seed of `run.seeds`; save each seed's model, per-step log and statistics.
finetune_control (method=control): the vanilla recipe from the control's base model, every seed
(with control.learn_options: from the base model, on data/learn_control).

One process per method, not per seed: a process start costs seconds (Python, torch, DVC's
bookkeeping) where a lab fine-tune takes about as long. A seed finished before the stage was
stopped is restored on the rerun, not trained again (pipeline.checkpoint.Finished)."""
import gc
import json
import logging
import shutil

import pandas as pd
import torch

from pipeline import dist, paths
from pipeline.checkpoint import Checkpoint, Finished, code_digest, fingerprint, linked_copy
from pipeline.config import control_skipped
from pipeline.io import atomic_path, write_csv
from pipeline.models import gather_whole, load_model, plain_model, trainable_model
from pipeline.runs import run_rows
from pipeline.schedule import learning_steps
from pipeline.stage import UserError, main, stage
from pipeline.train import Finetune

log = logging.getLogger("lwf")


@stage("finetune")
def run(cfg, method: str, seed: int | None = None):
    """Write artifacts/models/<method>/seed<k>/ and logs/train/<method>/seed<k>.csv for every seed of
    run.seeds (`seed=<k>`: that seed only, e.g. to debug one run)."""
    if method not in cfg.methods and method != paths.CONTROL:
        raise UserError(f"unknown method {method!r}; defined: {', '.join(cfg.methods)}")
    seeds = cfg.run.seeds if seed is None else [seed]
    dist.init()  # (several processes: the barrier below needs the group even where no seed loads a model)
    for seed in seeds:
        if method == paths.CONTROL and (reason := control_skipped(cfg)):
            with atomic_path(paths.model_dir(method, seed), is_dir=True) as tmp:
                (tmp / "skipped.json").write_text(json.dumps({"skipped": reason}) + "\n")
            write_csv(paths.train_log(method, seed), pd.DataFrame(columns=["event", "step", "kind", "loss", "lr"]))
        elif not cfg.methods["vanilla" if method == paths.CONTROL else method].train:
            write_base(method, seed)
        else:
            train_seed(cfg, method, seed, keep=len(seeds) > 1)
            gc.collect()  # the seed's model (held in reference cycles) is gone before the next one loads
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    dist.barrier()
    if dist.is_main():  # every seed is in place: the kept copies have done their job
        for seed in seeds:
            shutil.rmtree(paths.finished(method, seed), ignore_errors=True)


def train_seed(cfg, method: str, seed: int, keep: bool) -> None:
    """One seed of one method: artifacts/models/<method>/seed<k>/ and logs/train/<method>/seed<k>.csv."""
    m = cfg.methods["vanilla" if method == paths.CONTROL else method]
    base = paths.base_model_dir(method)
    model, tok = load_model(base, cfg.model, fsdp=cfg.launch.strategy == "fsdp")
    model = trainable_model(model, cfg.model)
    if cfg.model.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    if cfg.model.prefix_cache:  # the frozen blocks run once per row (pipeline/prefix_cache.py)
        from pipeline.prefix_cache import PrefixCacheError, serve_from_store

        try:  # the lab's pretrained control has its own base model: its rows are stored as they come
            prefix = serve_from_store(model, None if paths.own_base_model(method, cfg) else paths.prefix_store("train"))
        except PrefixCacheError as e:
            raise UserError(str(e)) from None
    learn, d_u, guard_rows = run_rows(cfg, m, paths.learn_data(method, cfg))
    log.info("stage finetune: %s seed %d: %d learning rows, %d unlearning rows (objective %s, %s), %d learning steps",
             method, seed, len(learn), len(d_u), m.objective, m.unlearn_optimizer, learning_steps(cfg.finetune, m))
    ckpt = paths.checkpoint(method, seed)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    run = Finetune(model, tok, learn, d_u, cfg.finetune, m, seed, cfg.data.max_length, cfg.model.add_bos,
                   cfg.launch.mixed_precision, f"{method}-seed{seed}", guard_rows)
    checkpoint = Checkpoint(ckpt, run, cfg.finetune.resume)
    # kept seeds are reused only by the same run: the checkpoint's fingerprint (settings, rows, weights),
    # every model and launch setting the stage reads, the number of processes and the code
    lora = cfg.model.lora.model_dump(mode="json") if cfg.model.lora is not None else None
    key = fingerprint(checkpoint.fingerprint, cfg.data.max_length, cfg.model.add_bos, cfg.model.dtype, lora,
                      cfg.model.trainable, cfg.model.prefix_cache, cfg.model.chat_template, cfg.model.device,
                      cfg.model.attn_implementation, cfg.model.gradient_checkpointing,
                      cfg.launch.model_dump(mode="json"), dist.world_size(), code_digest())
    finished = Finished(paths.finished(method, seed), key,
                        {"model": paths.model_dir(method, seed), "train.csv": paths.train_log(method, seed)})
    if cfg.finetune.resume and finished.restore():
        if cfg.model.prefix_cache:
            from pipeline.prefix_cache import disable_prefix_cache

            disable_prefix_cache(model)
        log.info("stage finetune: %s seed %d: restored, finished before the stage was stopped", method, seed)
        return
    rows, stats = run.run(checkpoint)
    if cfg.model.prefix_cache:
        from pipeline.prefix_cache import disable_prefix_cache

        log.info("stage finetune: %s seed %d: prefix cache: %d rows stored (%.1f MB, %d loaded from the prefix stage), "
                 "%d forwards of rows served from it, %d ran the frozen blocks", method, seed, len(prefix.store),
                 prefix.nbytes() / 1e6, prefix.loaded, prefix.hits, prefix.misses)
        stats["prefix_cache"] = prefix.counts()
        disable_prefix_cache(model)
    model = gather_whole(model, base, cfg.model)  # FSDP: the whole trained model on rank 0's CPU only (else None)
    if model is not None:
        model = plain_model(model)  # LoRA: merged, so evaluate loads an ordinary model
        with atomic_path(paths.model_dir(method, seed), is_dir=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "train_stats.json").write_text(json.dumps({"method": method, "seed": seed, **stats}, indent=2))
    write_csv(paths.train_log(method, seed), pd.DataFrame(rows, columns=["event", "step", "kind", "loss", "lr"]))
    if keep:  # more seeds follow in this process: keep this one's outputs should the stage be stopped
        finished.keep()


def write_base(method: str, seed: int) -> None:
    """A method with `train: false`: the base model's files unchanged (hard links where the file
    system allows, else copies), train_stats saying no fine-tuning ran, an empty training log."""
    src, dst = paths.base_model_dir(method), paths.model_dir(method, seed)
    log.info("stage finetune: %s seed %d: train false, the base model unchanged (no fine-tuning)", method, seed)
    with atomic_path(dst, is_dir=True) as tmp:
        linked_copy(src, tmp)
        stats = {"method": method, "seed": seed, "trained": False, "learn_steps": 0, "optimizer_steps": 0,
                 "unlearn_steps_scheduled": 0, "unlearn_steps_taken": 0, "unlearn_stopped_at": None}
        (tmp / "train_stats.json").write_text(json.dumps(stats, indent=2))
    write_csv(paths.train_log(method, seed), pd.DataFrame([], columns=["event", "step", "kind", "loss", "lr"]))


if __name__ == "__main__":
    main(run)
