"""control: is the negative transfer real? Pretrain a control base model WITHOUT the conflicting
rule (`control.corpus`: by default the same corpus with the conflicting facts' cities drawn at
random, so it knows the prompt format and the cities but no rule; same steps), fine-tune it with the
vanilla recipe under every seed, and score it on the same held-out data. The report compares it
with `vanilla` from the base model.
Only meaningful for the embedded lab (model.name: lab); otherwise it records that it was skipped.
"""
import logging

from pipeline import paths
from pipeline.config import MethodConfig
from pipeline.evaluate import evaluate_model, held_out
from pipeline.io import write_json
from pipeline.stage import load_rows, main, stage
from pipeline.train import finetune

log = logging.getLogger("lwf")


@stage("control")
def run(cfg):
    """Write metrics/control.json."""
    if cfg.model.name != "lab" or not cfg.control.enabled:
        write_json(paths.METRICS / "control.json", {"skipped": "control needs model.name: lab and control.enabled"})
        return
    from pipeline.lab import control_lab, pretrain_lab

    lab = control_lab(cfg.model.lab, cfg.control.corpus)
    model0, tok, stats = pretrain_lab(lab, cfg.data.max_length, desc="pretrain control")
    learn = load_rows(paths.LEARN_DATA, "train")
    learn_test, forget_tests, general = held_out(cfg)
    base_state = {k: v.clone() for k, v in model0.state_dict().items()}
    out = {"pretrain": stats, "base": evaluate_model(model0, tok, cfg.data, learn_test, forget_tests, general,
                                                     cfg.evaluate, cfg.model.add_bos),
           "seeds": {}}
    out["base"].pop("items")
    for seed in cfg.run.seeds:
        model0.load_state_dict(base_state)
        _, tstats = finetune(model0, tok, learn, [], cfg.finetune, MethodConfig(), seed, cfg.data.max_length,
                             cfg.model.add_bos, run_id=f"control-seed{seed}",
                             mixed_precision=cfg.launch.mixed_precision)
        res = evaluate_model(model0, tok, cfg.data, learn_test, forget_tests, general, cfg.evaluate, cfg.model.add_bos)
        res["train"] = tstats
        log.info("stage control: seed %d: learn %.3f", seed, res["learn_score"])
        out["seeds"][str(seed)] = res
    write_json(paths.METRICS / "control.json", out)


if __name__ == "__main__":
    main(run)
