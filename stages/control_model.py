"""control_model: the base model of the negative-transfer control. Is the negative transfer real?
The control is pretrained like the base model but WITHOUT the conflicting rule (`control.corpus`:
by default the same corpus with the conflicting facts' cities drawn at random, so it knows the
prompt format and the cities but no rule; same steps). It is then an ordinary run named `control`:
`finetune_control` is the `finetune` stage with the vanilla recipe from this base model,
`evaluate_control` the `evaluate` stage; the report compares it with `vanilla`.
With control.learn_options (any model), the control is instead the base model itself (hard-linked
files) learning data/learn_control: the same rows with other options, e.g. label words it has no
prior for. Without either, or without control.enabled, the three stages write only the reason
(`skipped`).
"""
import json
import logging

from pipeline import paths
from pipeline.checkpoint import linked_copy
from pipeline.io import atomic_path, save_pretrained, write_json
from pipeline.config import control_skipped
from pipeline.lab import control_lab, pretrain_lab
from pipeline.stage import main, stage

log = logging.getLogger("lwf")


@stage("control_model")
def run(cfg):
    """Write artifacts/control_base_model/ (model + tokenizer, or skipped.json) and metrics/control_model.json."""
    reason = control_skipped(cfg)
    if reason:
        log.info("stage control_model: skipped (%s)", reason)
        with atomic_path(paths.CONTROL_BASE_MODEL, is_dir=True) as tmp:
            (tmp / "skipped.json").write_text(json.dumps({"skipped": reason}) + "\n")
        write_json(paths.METRICS / "control_model.json", {"skipped": reason})
        return
    if cfg.control.learn_options is not None:
        log.info("stage control_model: the base model itself (the control learns data/learn_control)")
        with atomic_path(paths.CONTROL_BASE_MODEL, is_dir=True) as tmp:
            linked_copy(paths.BASE_MODEL, tmp)
        write_json(paths.METRICS / "control_model.json", {"base_model": str(paths.BASE_MODEL),
                                                          "learn_options": cfg.control.learn_options})
        return
    model, tok, stats = pretrain_lab(control_lab(cfg.model.lab, cfg.control.corpus), cfg.data.max_length,
                                     desc="pretrain control", stage="control_model")
    save_pretrained(paths.CONTROL_BASE_MODEL, model, tok)
    write_json(paths.METRICS / "control_model.json", {"corpus": cfg.control.corpus, **stats})


if __name__ == "__main__":
    main(run)
