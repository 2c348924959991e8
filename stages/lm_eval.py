"""lm_eval@<method>-<task>: one lm-evaluation-harness task (or group) of params `lm_eval.tasks` on
every seed's model of one method (optional extra `eval`; docs/lm-eval.md). dvc.yaml makes one such
stage per method and listed task, so with no task listed (the default) there is none to run."""
import json
import logging

from pipeline import paths
from pipeline.io import atomic_path
from pipeline.stage import main, stage

log = logging.getLogger("lwf")


@stage("lm_eval")
def run(cfg, method: str, task: str):
    """Write artifacts/eval/lm_eval/<method>/<task>/: results.json and samples/seed<k>/<task>.jsonl."""
    from pipeline import harness
    from pipeline.models import load_model

    ev = cfg.lm_eval
    harness.require_lm_eval([task])
    manager = harness.task_manager([task], ev.include_path)
    chat = cfg.model.chat_template if ev.apply_chat_template is None else ev.apply_chat_template
    out = {"method": method, "task": task, "seeds": {},
           "settings": {"limit": ev.limit, "num_fewshot": ev.num_fewshot, "apply_chat_template": chat,
                        "add_bos": cfg.model.add_bos and not chat, "max_length": ev.max_length}}
    with atomic_path(paths.lm_eval_dir(method, task), is_dir=True) as tmp:
        for seed in cfg.run.seeds:
            model, tok = load_model(paths.model_dir(method, seed), cfg.model)
            res = harness.run_tasks(model, tok, ev, cfg.model.add_bos, chat, manager, tasks=[task])
            counts = harness.write_samples(tmp / "samples" / f"seed{seed}", res)
            out["seeds"][str(seed)] = harness.seed_result(res)
            log.info("stage lm_eval: %s seed %d: %s", method, seed, "; ".join(
                f"{t} ({counts.get(t, 0)} samples) " + ", ".join(f"{k} {m['value']:.3f}" for k, m in r.items())
                for t, r in out["seeds"][str(seed)]["results"].items()))
            del model
        (tmp / "results.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main(run)
