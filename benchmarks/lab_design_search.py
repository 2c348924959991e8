"""Search for an embedded-lab design in which forgetting can help, on the VALIDATION split only.

For each design (lab pretraining, control corpus, unlearning step sizes) and lab seed: pretrain the
base model and the control (`control.corpus`); elicit the base model's answers on the
conflicting task's prompts (the oracle D_U, as large as lwf's default D_U); fine-tune with the
default recipe under fine-tuning seeds 0, 1, 2 as `vanilla`, `control` and `lwf_oracle` (periodic
unlearning of the oracle D_U) at each of the design's `unlearn_lr`; score lab_learn's validation
split. Prints, per design, lab seed and unlearning step size, the base model's agreement with the
conflicting rule and probability of its own conflicting answers, each method's accuracy and the
paired 95% intervals of oracle - vanilla and control - vanilla (negative transfer).

    python benchmarks/lab_design_search.py [--lab-seeds 0 1 2] [--designs NAME ...]
"""
import argparse
import copy

import numpy as np
from _common import machine, table

from pipeline.config import MethodConfig, load_config
from pipeline.data import encode_rows, sequence_nlls
from pipeline.evaluate import task_scores
from pipeline.generation import generate
from pipeline.lab import control_lab, pretrain_lab
from pipeline.report import paired_bootstrap
from pipeline.tasks import get_task
from pipeline.train import finetune

DESIGNS = {  # name -> (model.lab overrides, control.corpus, the oracle's unlearn_lr values, cities as single tokens)
    "control without facts": ({}, "without_facts", [0.1, 0.03], False),
    "noisy conflict 0.3, control without facts": ({"conflict_noise": 0.3}, "without_facts", [0.1, 0.03], False),
    "cities as single tokens, control without facts": ({}, "without_facts", [0.1], True),
    "control random cities (default)": ({}, "random_cities", [0.1, 0.03, 0.01], False),
}


def city_tokens(on: bool):
    """Design hook: the lab tokenizer with each " <city>" as one added token (answers = 1 token)."""
    import pipeline.lab as lab_module
    from pipeline.models import build_byte_tokenizer
    from pipeline.tasks.lab import CITIES

    def build():
        tok = build_byte_tokenizer()
        tok.add_tokens([" " + c for c in CITIES])
        return tok

    lab_module.build_byte_tokenizer = build if on else build_byte_tokenizer


def scores(model, tok, rows):
    return np.asarray(task_scores(model, tok, "lab_learn", rows, 8, 100)[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS))
    a = ap.parse_args()
    cfg = load_config("params.yaml")
    learn_task = get_task(cfg.data.learn.task)
    learn = learn_task.load("train", cfg.data.learn.n_train, cfg.data.seed, {})
    val = learn_task.load("validation", 200, cfg.data.seed + 1, {})
    conflict = get_task("lab_conflict").load("train", 192, cfg.data.seed + 100, {})
    n_d_u = round(cfg.confidence.forget_fraction * sum(t.n_train for t in cfg.data.forget))
    rows, pretrained = [], {}
    for name in a.designs:
        lab_over, corpus, unlearn_lrs, tokens = DESIGNS[name]
        city_tokens(tokens)
        for lab_seed in a.lab_seeds:
            lab = cfg.model.lab.model_copy(update={**lab_over, "seed": lab_seed})
            key = lab.model_dump_json() + corpus + str(tokens)
            if key not in pretrained:
                pretrained[key] = (*pretrain_lab(lab, cfg.data.max_length, desc=f"{name} lab{lab_seed}")[:2],
                                   pretrain_lab(control_lab(lab, corpus), cfg.data.max_length, desc="control")[0])
            base, tok, control = pretrained[key]
            gens = generate(base, tok, [r["prompt"] for r in conflict], 12, progress=False)
            d_u = [{"prompt": r["prompt"], "target": g["response"], "add_eos": not g["truncated"]}
                   for r, g in zip(conflict, gens)][:n_d_u]
            p_own = float(np.exp(-sequence_nlls(base, encode_rows(tok, d_u, cfg.data.max_length),
                                                tok.pad_token_id).cpu().numpy()).mean())
            agree = np.mean([get_task("lab_conflict").score(g["response"], r["answer"]) for g, r in zip(gens, conflict)])
            runs = [("vanilla", base, MethodConfig(), [], None), ("control", control, MethodConfig(), [], None)]
            runs += [(lr, base, MethodConfig(unlearn="periodic"), d_u, lr) for lr in unlearn_lrs]
            res = {}
            for seed in (0, 1, 2):
                for key, start, method, du, lr in runs:
                    ft = cfg.finetune if lr is None else cfg.finetune.model_copy(update={"unlearn_lr": lr})
                    m = copy.deepcopy(start)
                    finetune(m, tok, learn, du, ft, method, seed, cfg.data.max_length)
                    res.setdefault(key, []).append(scores(m, tok, val))
            van = np.stack(res["vanilla"])

            def delta(key):
                d, lo, hi = paired_bootstrap(np.stack(res[key]) - van, 2000, 0)
                return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"

            for lr in unlearn_lrs:
                row = [name, lab_seed, lr, f"{agree:.2f}", f"{p_own:.3f}", f"{van.mean():.3f}",
                       f"{np.stack(res[lr]).mean():.3f}", f"{np.stack(res['control']).mean():.3f}", delta(lr),
                       delta("control")]
                rows.append(row)
                print(row, flush=True)
    table(f"Lab designs on lab_learn's VALIDATION split, 3 fine-tuning seeds each ({machine()})",
          ["design", "lab seed", "oracle unlearn_lr", "base agrees with conflict rule", "p(own conflicting answer)",
           "vanilla", "oracle", "control", "oracle − vanilla [95% CI]", "control − vanilla [95% CI]"], rows)


if __name__ == "__main__":
    main()
