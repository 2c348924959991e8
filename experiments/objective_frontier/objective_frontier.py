"""The graceful frontier of each unlearning objective on the embedded lab: for every objective
(pipeline/objectives.py) and step size (`unlearn_lr`, separate SGD steps), how far lwf's D_U NLL
rises (how much is unlearned) against how much general-text perplexity, the learning score and the
forgetting score change, each paired with vanilla on the same fine-tuning seed and held-out items.

For each lab seed (a pretraining): pretrain the base model as the base_model stage does, run the
pipeline's steps 1-3 as the stages do (experiments/_common.lab_confidence_table: Fisher,
self-knowledge, the confidence table ranked by `--score`, default fisher_distance, and lwf's
selection `high`), then fine-tune `vanilla` and, per (objective, unlearn_lr), `lwf` (periodic
unlearning of the table's selected rows, the default recipe otherwise) under every fine-tuning
seed, and score:

    validation (default; every choice is made on it): lab_learn's validation split; each forgetting
        task's training-pool prompts drawn with another seed (they may overlap D_self); general text
        drawn with another seed than the test split's
    test: the splits the prepare stage writes (the final table only)

Prints one table (per objective and step: mean over lab seeds of the paired deltas, with the
intervals of each lab seed) and writes OUT.csv (one row per lab seed, objective and step: the
points of the frontier plot, `dvc plots show` via dvc.yaml's top-level `plots`) and OUT.png.

    python experiments/objective_frontier/objective_frontier.py [--lab-seeds 0 1 2] [--seeds 0 1 2] [--split validation]
        [--objectives ga npo simnpo wga] [--lrs 0.03 0.1 0.3] [--out docs/results/frontier_lab]
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import LAB_STUDY_SCORE, held_out, interval, lab_confidence_table, machine, table  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.confidence import SCORES, unlearn_set_with_references  # noqa: E402
from pipeline.evaluate import evaluate_model  # noqa: E402
from pipeline.lab import pretrain_lab  # noqa: E402
from pipeline.report import paired_bootstrap, perplexity_bootstrap  # noqa: E402
from pipeline.tasks import prepared_rows  # noqa: E402
from pipeline.train import finetune  # noqa: E402

def items(res) -> dict:
    forget = [np.asarray(v, float) for k, v in res["items"].items() if k.startswith("forget/")]
    return {"learn": np.asarray(res["items"]["learn"], float),
            "forget": np.concatenate(forget) if forget else np.zeros(0),
            "d_u": np.asarray(res["items"]["nll/d_u"], float),
            "nll": np.asarray(res["items"]["general/nll"], float),
            "tokens": np.asarray(res["items"]["general/tokens"], float),
            "ppl": res["perplexity"]}


def one_lab(cfg, lab_seed, seeds, objectives, lrs, split, score=LAB_STUDY_SCORE):
    lab = cfg.model.lab.model_copy(update={"seed": lab_seed})
    base, tok, _ = pretrain_lab(lab, cfg.data.max_length, desc=f"pretrain lab{lab_seed}")
    d = cfg.data
    learn = prepared_rows(d.learn, d.seed, "train")  # the prepare stage's learning rows
    d_u = unlearn_set_with_references(lab_confidence_table(cfg, base, tok, learn, score), "high")
    learn_eval, forget_eval, general = held_out(cfg, split)
    sets = {"d_u": [{k: v for k, v in r.items() if k != "ref_nll"} for r in d_u]}

    def run(method, rows, seed):
        m = copy.deepcopy(base)
        _, stats = finetune(m, tok, learn, rows, cfg.finetune, method, seed, d.max_length)
        res = evaluate_model(m, tok, d, learn_eval, forget_eval, general, cfg.evaluate, cfg.model.add_bos, sets)
        return {**items(res), "stats": stats}

    van = {s: run(cfg.methods["vanilla"], [], s) for s in seeds}
    out = []
    for obj in objectives:
        for lr in lrs:
            method = cfg.methods["lwf"].model_copy(update={"objective": obj, "objective_args": {}, "unlearn_lr": lr})
            t0 = time.time()
            lw = {s: run(method, d_u, s) for s in seeds}
            pair = lambda k: np.stack([lw[s][k] - van[s][k] for s in seeds])  # noqa: E731
            ppl = perplexity_bootstrap(np.stack([lw[s]["nll"] for s in seeds]), np.stack([van[s]["nll"] for s in seeds]),
                                       van[seeds[0]]["tokens"], 2000, 0)
            ppl_v = float(np.mean([van[s]["ppl"] for s in seeds]))
            out.append({"lab_seed": lab_seed, "objective": obj, "unlearn_lr": lr,
                        "d_u_nll_rise": paired_bootstrap(pair("d_u"), 2000, 0),
                        "ppl_change": tuple(x / ppl_v for x in ppl),  # relative to vanilla's perplexity
                        "learn_delta": paired_bootstrap(pair("learn"), 2000, 0),
                        "forget_delta": paired_bootstrap(pair("forget"), 2000, 0),
                        "vanilla_learn": float(np.mean([van[s]["learn"].mean() for s in seeds])),
                        "vanilla_ppl": ppl_v,
                        "unlearn_steps_taken": float(np.mean([lw[s]["stats"]["unlearn_steps_taken"] for s in seeds])),
                        "seconds": time.time() - t0})
            r = out[-1]
            print(f"lab{lab_seed} {obj} lr {lr}: D_U NLL {interval(*r['d_u_nll_rise'])}, ppl {interval(*r['ppl_change'])}, "
                  f"learn {interval(*r['learn_delta'])}, forget {interval(*r['forget_delta'])}, "
                  f"{r['unlearn_steps_taken']:.1f} steps, {r['seconds']:.0f} s", flush=True)
    return out


def side(ci) -> str:
    return "+" if ci[1] > 0 else "-" if ci[2] < 0 else "0"


def plot(df: pd.DataFrame, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for obj, g in df.groupby("objective", sort=False):
        m = g.groupby("unlearn_lr")[["d_u_nll_rise", "ppl_change"]].mean().reset_index()
        ax.plot(m["d_u_nll_rise"], 100 * m["ppl_change"], marker="o", label=obj)
        for _, r in m.iterrows():
            ax.annotate(f"{r['unlearn_lr']:g}", (r["d_u_nll_rise"], 100 * r["ppl_change"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("rise of lwf's D_U NLL vs vanilla (nats/token)")
    ax.set_ylabel("general-text perplexity change vs vanilla (%)")
    ax.set_title("graceful frontier per objective (labels: unlearn_lr)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ci_columns(r: dict) -> dict:
    """The CSV columns of one frontier point: each paired delta as mean, _lo and _hi."""
    return {f"{k}{suf}": r[k][i] for k in ("d_u_nll_rise", "ppl_change", "learn_delta", "forget_delta")
            for i, suf in enumerate(("", "_lo", "_hi"))}


def write_frontier(rows: list[dict], out: Path) -> None:
    """OUT.csv (one row per point) and OUT.png (the plot), each written atomically."""
    from pipeline.io import atomic_path

    flat = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        flat.to_csv(tmp, index=False)
    with atomic_path(out.with_suffix(".png")) as tmp:
        plot(flat, tmp)
    print(f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=["ga", "npo", "simnpo", "wga"])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    ap.add_argument("--split", choices=["validation", "test"], default="validation")
    ap.add_argument("--out", default="docs/results/frontier_lab")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--score", default=LAB_STUDY_SCORE, choices=[s for s in SCORES if s != "optimum_distance"],
                    help="the confidence score lwf's D_U is ranked by (not params' confidence.score: no theta*_L here)")
    a = ap.parse_args()
    cfg = load_config(a.params)
    res = [r for s in a.lab_seeds for r in one_lab(cfg, s, a.seeds, a.objectives, a.lrs, a.split, a.score)]
    rows = []
    for obj in a.objectives:
        for lr in a.lrs:
            rs = [r for r in res if r["objective"] == obj and r["unlearn_lr"] == lr]
            mean = lambda k: float(np.mean([r[k][0] for r in rs]))  # noqa: E731
            sides = lambda k: "".join(side(r[k]) for r in rs)  # noqa: E731
            rows.append([obj, lr, f"{mean('d_u_nll_rise'):+.3f} ({sides('d_u_nll_rise')})",
                         f"{100 * mean('ppl_change'):+.1f}% ({sides('ppl_change')})",
                         f"{mean('learn_delta'):+.3f} ({sides('learn_delta')})",
                         f"{mean('forget_delta'):+.3f} ({sides('forget_delta')})",
                         f"{np.mean([r['unlearn_steps_taken'] for r in rs]):.1f}"])
    table(f"Unlearning objectives on the lab, {a.split} split, D_U ranked by {a.score}: lwf - vanilla, mean over lab seeds {a.lab_seeds} "
          f"(in brackets each lab seed's side of 0: + / - = its 95% interval over fine-tuning seeds {a.seeds} and "
          f"items lies above / below 0, 0 = contains 0); {machine()}",
          ["objective", "unlearn_lr", "D_U NLL rise", "perplexity change", "learning score Δ", "forgetting score Δ",
           "unlearning steps taken"], rows)
    table("Per lab seed (95% intervals)", ["lab seed", "objective", "unlearn_lr", "D_U NLL rise", "perplexity change",
                                           "learning score Δ", "forgetting score Δ"],
          [[r["lab_seed"], r["objective"], r["unlearn_lr"], interval(*r["d_u_nll_rise"]),
            interval(*[100 * x for x in r["ppl_change"]]) + " %", interval(*r["learn_delta"]),
            interval(*r["forget_delta"])] for r in res])
    out = Path(a.out)
    write_frontier([{"lab_seed": r["lab_seed"], "objective": r["objective"], "unlearn_lr": r["unlearn_lr"],
                     "split": a.split, **ci_columns(r), "vanilla_learn": r["vanilla_learn"],
                     "vanilla_ppl": r["vanilla_ppl"], "unlearn_steps_taken": r["unlearn_steps_taken"]} for r in res], out)


if __name__ == "__main__":
    main()
