"""Search for an embedded-lab design in which forgetting can help, on the VALIDATION split only.

For each design (lab pretraining, control corpus, oracle unlearning settings) and lab seed: pretrain
the base model and the control (`control.corpus`); run the pipeline's steps 1-3 as the stages do
(Fisher on the learning rows, the base model's self-knowledge on every forgetting task's training
prompts, the confidence table ranked by `--score` (default fisher_distance, whatever params' score)
with the params' selection); fine-tune with the default recipe under fine-tuning seeds 0, 1, 2 as
`vanilla`, `control`, `lwf`, `lwf_random` and `lwf_oracle` (periodic unlearning of the table's
`selected_oracle` rows) under each of the design's oracle settings; score lab_learn's validation split. Prints, per design, lab seed and oracle setting,
the base model's agreement with the conflicting rule and probability of its own conflicting answers,
each method's accuracy, the paired 95% intervals of oracle - vanilla, control - vanilla (negative
transfer), lwf - vanilla and oracle - random, and the side of 0.5 of every confidence score's AUROC
(conflicting vs neutral self-knowledge, 95% interval over samples).

    python experiments/lab_design/lab_design_search.py [--lab-seeds 0 1 2] [--designs NAME ...] [--score S]
"""
import argparse
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import (LAB_STUDY_SCORE, auroc_ci, interval, lab_confidence_table, machine,  # noqa: E402
                                 side, table)

from pipeline.confidence import SCORES, as_rows, unlearn_set  # noqa: E402
from pipeline.config import MethodConfig, load_config  # noqa: E402
from pipeline.data import encode_rows, sequence_nlls  # noqa: E402
from pipeline.evaluate import task_scores  # noqa: E402
from pipeline.lab import control_lab, pretrain_lab  # noqa: E402
from pipeline.report import paired_bootstrap  # noqa: E402
from pipeline.tasks import get_task, prepared_rows  # noqa: E402
from pipeline.train import finetune  # noqa: E402


def lrs(*values):
    return [{"unlearn_lr": v} for v in values]


DESIGNS = {  # name -> (model.lab overrides, control.corpus, the oracle's method overrides, cities as single tokens)
    "control without facts": ({"conflict_noise": 0.0}, "without_facts", lrs(0.1, 0.03), False),
    "noisy conflict 0.3, control without facts": ({"conflict_noise": 0.3}, "without_facts", lrs(0.1, 0.03), False),
    "cities as single tokens, control without facts": ({"conflict_noise": 0.0}, "without_facts", lrs(0.1), True),
    "control random cities, noise 0": ({"conflict_noise": 0.0}, "random_cities", lrs(0.1, 0.03, 0.01), False),
    # ascent stopped near chance: the bound is the D_U batch's mean per-token NLL; an answer " city"+EOS has
    # 6 target tokens and log(8)/6 = 0.35 nats per token is "any of the 8 cities"
    "oracle stopped near chance": ({"conflict_noise": 0.0}, "random_cities",
                                   [{"unlearn_max_loss": 0.35}, {"unlearn_max_loss": 1.0}], False),
    # the misconception held with p well below 1 (uncertain self-knowledge, the method's premise)
    "noisy conflict 0.5 (default)": ({"conflict_noise": 0.5}, "random_cities", lrs(0.1, 0.03), False),
    "noisy conflict 0.7": ({"conflict_noise": 0.7}, "random_cities", lrs(0.1, 0.03), False),
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
    ap.add_argument("--score", default=LAB_STUDY_SCORE, choices=[s for s in SCORES if s != "optimum_distance"],
                    help="the confidence score lwf's D_U is ranked by (not params' confidence.score: no theta*_L here)")
    a = ap.parse_args()
    cfg = load_config("params.yaml")
    learn_task = get_task(cfg.data.learn.task)
    learn = prepared_rows(cfg.data.learn, cfg.data.seed, "train")  # the prepare stage's learning rows
    val = learn_task.load("validation", 200, cfg.data.seed + 1, {})
    rows, pretrained = [], {}
    for name in a.designs:
        lab_over, corpus, oracle_settings, tokens = DESIGNS[name]
        city_tokens(tokens)
        for lab_seed in a.lab_seeds:
            lab = cfg.model.lab.model_copy(update={**lab_over, "seed": lab_seed})
            key = lab.model_dump_json() + corpus + str(tokens)
            if key not in pretrained:
                pretrained[key] = (*pretrain_lab(lab, cfg.data.max_length, desc=f"{name} lab{lab_seed}")[:2],
                                   pretrain_lab(control_lab(lab, corpus), cfg.data.max_length, desc="control")[0])
            base, tok, control = pretrained[key]
            df = lab_confidence_table(cfg, base, tok, learn, a.score)
            conflict = df[df["forget_task"] == "lab_conflict"]
            p_own = float(np.exp(-sequence_nlls(base, encode_rows(tok, as_rows(conflict), cfg.data.max_length),
                                                tok.pad_token_id).cpu().numpy()).mean())
            ci = auroc_ci(df, cfg.confidence.auroc_positive, cfg.confidence.auroc_negative)
            sides = " ".join(f"{s}{side(lo, hi, 0.5)}" for s, (_, lo, hi) in ci.items())
            periodic = cfg.methods["lwf"]  # the default unlearning recipe (D_U is given per run)
            runs = [("vanilla", base, MethodConfig(), [], {}), ("control", control, MethodConfig(), [], {}),
                    ("lwf", base, periodic, unlearn_set(df, "high"), {}),
                    ("random", base, periodic, unlearn_set(df, "random"), {})]
            runs += [(i, base, periodic, unlearn_set(df, "oracle"), over) for i, over in enumerate(oracle_settings)]
            res = {}
            for seed in (0, 1, 2):
                for key, start, method, du, over in runs:
                    m = copy.deepcopy(start)
                    finetune(m, tok, learn, du, cfg.finetune, method.model_copy(update=over), seed, cfg.data.max_length)
                    res.setdefault(key, []).append(scores(m, tok, val))
            van = np.stack(res["vanilla"])

            def delta(key, ref=van):
                return interval(*paired_bootstrap(np.stack(res[key]) - ref, 2000, 0))

            for i, over in enumerate(oracle_settings):
                row = [name, lab_seed, ", ".join(f"{k} {v}" for k, v in over.items()), f"{conflict['correct'].mean():.2f}",
                       f"{p_own:.3f}", f"{van.mean():.3f}", f"{np.stack(res[i]).mean():.3f}",
                       f"{np.stack(res['control']).mean():.3f}", delta(i), delta("control"), delta("lwf"),
                       delta(i, np.stack(res["random"])), sides]
                rows.append(row)
                print(row, flush=True)
    table(f"Lab designs on lab_learn's VALIDATION split, 3 fine-tuning seeds each, lwf's D_U ranked by {a.score} "
          f"({machine()})",
          ["design", "lab seed", "oracle setting", "base agrees with conflict rule", "p(own conflicting answer)",
           "vanilla", "oracle", "control", "oracle − vanilla [95% CI]", "control − vanilla [95% CI]",
           "lwf − vanilla [95% CI]", "oracle − random [95% CI]", "AUROC side of 0.5 per score"], rows)


if __name__ == "__main__":
    main()
