"""Search for an embedded-lab design in which forgetting can help, on the VALIDATION split only.

For each design (lab pretraining, control corpus, oracle unlearning settings) and lab seed: pretrain
the base model and the control (`control.corpus`); run the pipeline's steps 1-3 as the stages do
(Fisher on the learning rows, the base model's self-knowledge on every forgetting task's training
prompts, the confidence table with the default score and selection); fine-tune with the default
recipe under fine-tuning seeds 0, 1, 2 as `vanilla`, `control`, `lwf`, `lwf_random` and
`lwf_oracle` (periodic unlearning of the table's `selected_oracle` rows) under each of the design's
oracle settings; score lab_learn's validation split. Prints, per design, lab seed and oracle setting,
the base model's agreement with the conflicting rule and probability of its own conflicting answers,
each method's accuracy, the paired 95% intervals of oracle - vanilla, control - vanilla (negative
transfer), lwf - vanilla and oracle - random, and the side of 0.5 of every confidence score's AUROC
(conflicting vs neutral self-knowledge, 95% interval over samples).

    python benchmarks/lab_design_search.py [--lab-seeds 0 1 2] [--designs NAME ...]
"""
import argparse
import copy

import numpy as np
import pandas as pd
from _common import auroc_ci, interval, machine, side, table

from pipeline.confidence import as_rows, confidence_scores, select, unlearn_set
from pipeline.config import MethodConfig, load_config
from pipeline.data import encode_rows, sequence_nlls
from pipeline.elicit import elicit_task
from pipeline.evaluate import task_scores
from pipeline.fisher import fisher_and_mean_grad
from pipeline.lab import control_lab, pretrain_lab
from pipeline.report import paired_bootstrap
from pipeline.tasks import get_task
from pipeline.train import finetune


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


def confidence_table(cfg, base, tok, learn) -> pd.DataFrame:
    """Steps 1-3 of the pipeline as the stages run them (fisher, elicit, confidence) on this base model."""
    F, gL = fisher_and_mean_grad(base, tok, learn[:cfg.fisher.n_samples], cfg.data.max_length)
    frames = []
    for i, ref in enumerate(cfg.data.forget):  # the prepare stage's rows of each forgetting task
        rows = get_task(ref.task).load("train", ref.n_train, cfg.data.seed + 100 * (i + 1), ref.options)
        frames.append(elicit_task(base, tok, get_task(ref.task), rows, cfg.elicit)[0])
    sk = pd.concat(frames, ignore_index=True)
    c = cfg.confidence
    sc = confidence_scores(base, tok, as_rows(sk), F, gL, cfg.data.max_length, seed=c.seed, learn_rows=learn,
                           probe=c.probe)
    # no optimum stage here (theta*_L): the published optimum_distance is NaN, so the design search ranks by
    # fisher_distance, the default of the designs' time
    score = "fisher_distance" if c.score == "optimum_distance" else c.score
    return select(pd.concat([sk, sc], axis=1), score, c.forget_fraction, c.per_task, c.seed, c.auroc_positive)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS))
    a = ap.parse_args()
    cfg = load_config("params.yaml")
    learn_task = get_task(cfg.data.learn.task)
    learn = learn_task.load("train", cfg.data.learn.n_train, cfg.data.seed, {})
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
            df = confidence_table(cfg, base, tok, learn)
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
    table(f"Lab designs on lab_learn's VALIDATION split, 3 fine-tuning seeds each ({machine()})",
          ["design", "lab seed", "oracle setting", "base agrees with conflict rule", "p(own conflicting answer)",
           "vanilla", "oracle", "control", "oracle − vanilla [95% CI]", "control − vanilla [95% CI]",
           "lwf − vanilla [95% CI]", "oracle − random [95% CI]", "AUROC side of 0.5 per score"], rows)


if __name__ == "__main__":
    main()
