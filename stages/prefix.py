"""prefix_train, prefix_eval (part=train | eval): the frozen bottom blocks of the base model run
once over every row the later stages feed (`model.prefix_cache`, pipeline/prefix_cache.py); with the cache off, a placeholder.

- part=train: the learning rows and all self-knowledge (every D_U is a subset) as the fine-tune
  encodes them -> artifacts/prefix/train.pt, loaded by every finetune@<method>;
- part=eval: every row the evaluate stage scores by a forward (loglik test rows of the learning and
  forgetting tasks, the general text, the self-knowledge NLL sets) -> artifacts/prefix/eval.pt.
The relabelled control (control.learn_options) learns from the base model itself, so its rows (the
same reviews, other label words) are stored too and finetune_control / evaluate_control read them.
Two files, so that what only the evaluations read (general text, evaluate.batch_size) never reruns
the fine-tunes through the store."""
import logging
import time

from pipeline import paths
from pipeline.io import atomic_path
from pipeline.prefix_cache import save_disabled
from pipeline.stage import UserError, main, stage

log = logging.getLogger("lwf")
PARTS = ("train", "eval")


@stage("prefix")
def run(cfg, part: str):
    """Write artifacts/prefix/<part>.pt."""
    if part not in PARTS:
        raise UserError(f"prefix part {part!r}: one of {', '.join(PARTS)}")
    out = paths.prefix_store(part)
    if not cfg.model.prefix_cache:
        with atomic_path(out) as tmp:
            save_disabled(tmp)
        log.info("stage prefix: %s: model.prefix_cache is off, nothing stored", part)
        return
    # imported here: the placeholder above needs none of them (a process start-up, not work)
    import pandas as pd

    from pipeline.config import control_learn, control_skipped
    from pipeline.confidence import as_rows
    from pipeline.data import encode_rows, sequence_nlls
    from pipeline.evaluate import choice_logliks, held_out, perplexity, set_nlls
    from pipeline.models import load_model, trainable_model
    from pipeline.prefix_cache import PrefixCacheError, enable_prefix_cache, save_store
    from pipeline.stage import load_rows
    from pipeline.tasks import get_task

    model, tok = load_model(paths.BASE_MODEL, cfg.model)
    model = trainable_model(model, cfg.model)
    try:
        state = enable_prefix_cache(model)
    except PrefixCacheError as e:
        raise UserError(str(e)) from None
    t0 = time.time()
    self_rows = as_rows(pd.read_parquet(paths.SELF_KNOWLEDGE))
    max_length, add_bos = cfg.data.max_length, cfg.model.add_bos
    control = control_learn(cfg) if control_skipped(cfg) is None else None  # the relabelled control's task
    if part == "train":  # batched like the fine-tune (finetune.batch_size: a setting its stages already depend on)
        bs = cfg.finetune.batch_size
        learn = load_rows(paths.LEARN_DATA, "train")
        if control is not None:
            learn += load_rows(paths.LEARN_CONTROL_DATA, "train")
        rows = learn + self_rows
        log.info("stage prefix: train: %s, %d learning%s + %d self-knowledge rows through blocks 0-%d", cfg.model.name,
                 len(learn), " (with the control's)" if control is not None else "", len(self_rows), state.cut - 1)
        sequence_nlls(model, encode_rows(tok, rows, max_length, add_bos), tok.pad_token_id, bs, desc="prefix train")
    else:
        bs = cfg.evaluate.batch_size
        learn_test, forget_tests, general = held_out(cfg)
        scored = [(cfg.data.learn, learn_test)] + [(ref, forget_tests[ref.key]) for ref in cfg.data.forget]
        if control is not None:
            scored.append((control, load_rows(paths.LEARN_CONTROL_DATA, "test")))
        for ref, rows in scored:
            task = get_task(ref.task, ref.options)
            if task.has_gold and task.scoring == "loglik":  # generation runs the whole model anyway
                log.info("stage prefix: eval: %s, %d %s test rows (loglik%s)", cfg.model.name, len(rows), ref.key,
                         ", the control's label words" if ref is control else "")
                choice_logliks(model, tok, task, rows, bs, add_bos, desc=f"prefix eval {ref.key}")
        log.info("stage prefix: eval: %s, %d general-text rows, %d self-knowledge rows", cfg.model.name, len(general),
                 len(self_rows))
        perplexity(model, tok, general, max_length, bs, add_bos, desc="prefix eval general")
        set_nlls(model, tok, self_rows, max_length, bs, add_bos, desc="prefix eval self-knowledge")
    with atomic_path(out) as tmp:
        n = save_store(model, tmp)
    log.info("stage prefix: %s: %d rows stored (%.0f MB) in %.0f s", part, n, state.nbytes() / 1e6, time.time() - t0)


if __name__ == "__main__":
    main(run)
