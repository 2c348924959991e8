"""evaluate@<method>: score every seed's model of one method on held-out data (evaluate_control:
method=control, the negative-transfer control's fine-tunes; with control.learn_options on the
relabelled task's test rows, the same rows with the control's options)."""
import json
import logging

from pipeline import paths
from pipeline.config import control_learn, control_skipped
from pipeline.evaluate import evaluate_model, generations_table, held_out, nll_sets
from pipeline.io import rounded, write_json, write_parquet
from pipeline.models import describe, load_model
from pipeline.stage import UserError, main, stage

log = logging.getLogger("lwf")


@stage("evaluate")
def run(cfg, method: str):
    """Write artifacts/eval/<method>.json: per seed, scores, per-item scores and training stats; and
    artifacts/eval/<method>.generations.parquet: per seed, task and test row, what its score came from."""
    if method == paths.CONTROL and (reason := control_skipped(cfg)):
        write_parquet(paths.generations_file(method), generations_table([]))
        write_json(paths.eval_file(method), {"method": method, "skipped": reason})
        return
    learn_test, forget_tests, general = held_out(cfg, method)
    data = cfg.data  # the relabelled control is scored on its own task (its label words)
    if method == paths.CONTROL and (ref := control_learn(cfg)) is not None:
        data = cfg.data.model_copy(update={"learn": ref})
    sets = nll_sets(cfg, method)
    log.info("stage evaluate: %s, %d seeds, per model: %d learn test rows, forget %s, %d general-text rows, "
             "%d NLL-set rows", method, len(cfg.run.seeds), len(learn_test), {k: len(v) for k, v in forget_tests.items()},
             len(general), sum(map(len, sets.values())))
    out = {"method": method, "seeds": {}}
    trained = cfg.methods[method].train if method in cfg.methods else True
    res, kept, generations = None, [], []
    for seed in cfg.run.seeds:
        d = paths.model_dir(method, seed)
        if not trained and res is not None:  # train: false: every seed's model is the base model, scored once
            out["seeds"][str(seed)] = {**res, "train": json.loads((d / "train_stats.json").read_text())}
            generations += [{**r, "seed": seed} for r in kept]
            continue
        model, tok = load_model(d, cfg.model, fsdp=cfg.launch.strategy == "fsdp")
        log.info("stage evaluate: %s seed %d: scoring %s", method, seed, describe(model))
        prefix = _prefix_cache(cfg, model, method)
        kept = []
        res = evaluate_model(model, tok, data, learn_test, forget_tests, general, cfg.evaluate, cfg.model.add_bos,
                             sets, generations=kept)
        kept = [{"method": method, **r} for r in kept]
        generations += [{**r, "seed": seed} for r in kept]
        if prefix is not None:
            res["prefix_cache"] = {"loaded": prefix.loaded, "hits": prefix.hits, "misses": prefix.misses}
            log.info("stage evaluate: %s seed %d: prefix cache: %d row forwards served, %d ran the frozen blocks",
                     method, seed, prefix.hits, prefix.misses)
        res["train"] = json.loads((d / "train_stats.json").read_text())
        log.info("stage evaluate: %s seed %d%s: learn %.3f forget %s ppl %.3f NLL of lwf's D_U %.3f", method, seed,
                 "" if trained else " (the base model, not fine-tuned: scored once for every seed)", res["learn_score"],
                 rounded(res["forget_scores"]), res["perplexity"], res["d_u_nll"])
        out["seeds"][str(seed)] = res
    write_parquet(paths.generations_file(method), generations_table(generations))
    write_json(paths.eval_file(method), out)


def _prefix_cache(cfg, model, method: str):
    """With `model.prefix_cache`: the base model's stored frozen-block states (prefix_eval) serve this
    model's forwards, which then run only the top blocks; refused if its frozen blocks differ."""
    if not cfg.model.prefix_cache or paths.own_base_model(method, cfg):  # another base model: another store
        return None
    from pipeline.models import trainable_model
    from pipeline.prefix_cache import PrefixCacheError, serve_from_store

    trainable_model(model, cfg.model)  # marks the blocks model.trainable names: the cut
    try:
        return serve_from_store(model, paths.prefix_store("eval"))
    except PrefixCacheError as e:
        raise UserError(str(e)) from None


if __name__ == "__main__":
    main(run)
