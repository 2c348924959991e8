"""lm_eval@<method>: the lm-evaluation-harness tasks of params `lm_eval` on every seed's model of
one method (optional extra `eval`; docs/lm-eval.md). With no tasks listed it writes an empty
result and imports nothing of lm-eval."""
import json
import logging

from pipeline import paths
from pipeline.io import atomic_path
from pipeline.stage import main, stage

log = logging.getLogger("lwf")


@stage("lm_eval")
def run(cfg, method: str):
    """Write artifacts/lm_eval/<method>/: results.json and samples/seed<k>/<task>.jsonl."""
    ev = cfg.lm_eval
    tasks = list(ev.tasks)
    out = {"method": method, "tasks": tasks, "seeds": {}}
    if tasks:
        from pipeline import harness
        from pipeline.models import load_model

        harness.require_lm_eval(tasks)
        manager = harness.task_manager(tasks, ev.include_path)
        chat = cfg.model.chat_template if ev.apply_chat_template is None else ev.apply_chat_template
        out["settings"] = {"limit": ev.limit, "num_fewshot": ev.num_fewshot, "apply_chat_template": chat,
                           "add_bos": cfg.model.add_bos and not chat, "max_length": ev.max_length}
    with atomic_path(paths.lm_eval_dir(method), is_dir=True) as tmp:
        for seed in cfg.run.seeds if tasks else []:
            model, tok = load_model(paths.model_dir(method, seed), cfg.model)
            res = harness.run_tasks(model, tok, ev, cfg.model.add_bos, chat, manager)
            counts = harness.write_samples(tmp / "samples" / f"seed{seed}", res)
            out["seeds"][str(seed)] = harness.seed_result(res)
            log.info("stage lm_eval: %s seed %d: %s", method, seed, "; ".join(
                f"{t} ({counts.get(t, 0)} samples) " + ", ".join(f"{k} {m['value']:.3f}" for k, m in r.items())
                for t, r in out["seeds"][str(seed)]["results"].items()))
            del model
        if not tasks:
            log.info("stage lm_eval: %s: no lm_eval.tasks listed, empty result", method)
        (tmp / "results.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main(run)
