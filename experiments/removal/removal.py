"""Which unlearning step removes what it is given? For lwf_oracle (D_U = the conflicting
self-knowledge, handed to it) under each unlearning step (`unlearn_optimizer`, `objective`,
`unlearn_lr`): the NLL of the conflicting self-knowledge after fine-tuning against the control's (a
model pretrained without the conflicting rule, fine-tuned with the vanilla recipe) and vanilla's,
and general-text perplexity and the learning score against vanilla's, on validation rows.

Reads finished lab runs (`dvc repro` with the control, e.g. experiments/lab_robustness's
OUT/lab<s>-t1): their base and control models, learning rows, confidence table and params; per
step setting and fine-tuning seed it fine-tunes lwf_oracle as the finetune stage does
(`pipeline.runs.run_rows`, `pipeline.train.finetune`, the run's params with the setting applied
to the method), then vanilla and the control once per seed, and scores each on validation rows
(`experiments._common.held_out`: never the test split).

The rule, fixed before the run: a setting *removes* in a project when the mean over fine-tuning
seeds of lwf_oracle's conflicting NLL is at or above the control's and its validation perplexity
within +5% of vanilla's. The chosen setting removes in every project; among those, the least
perplexity rise (mean over projects); if none removes everywhere, none is chosen and the table
says how far each got (share of the control's NLL gap closed, min over projects).

    python experiments/removal/removal.py PROJECT [PROJECT ...] [--seeds 0 1 2] \
        [--settings separate:npo:0.03 adam:npo:0.003 joint:npo:1.0 ...] [--log FILE]

A setting is `unlearn_optimizer:objective:size[:unlearn_every[:key=value...]]`, size = `unlearn_lr`
(separate, adam) or `alpha` (joint, shared), e.g. `adam:npo:0.0001:1:unlearn_batch_size=48`;
`negate:steps:lr:scale` is forget-then-learn (task negation on D_U before vanilla, no unlearning
steps; pipeline/negation.py).
"""
import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import held_out, log_to, machine, table  # noqa: E402

from pipeline import paths  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.evaluate import evaluate_model, nll_sets  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.runs import run_rows  # noqa: E402
from pipeline.train import finetune  # noqa: E402

SETTINGS = ["separate:npo:0.03", "separate:npo:0.1", "separate:npo:0.3",
            "adam:npo:0.001", "adam:npo:0.003", "adam:npo:0.01"]


def oracle_at(oracle, setting: dict):
    """lwf_oracle's method config with a setting's keys; another objective takes its own default arguments."""
    other = setting.get("objective", oracle.objective) != oracle.objective
    return oracle.model_copy(update={**setting, **({"objective_args": {}} if other else {})})


def parse_setting(s: str) -> dict:
    """'adam:npo:0.003' -> the method keys it sets; the number is `unlearn_lr` for separate / adam steps
    and `alpha` (the objective's weight in the learning step) for joint / shared; a fourth field sets
    `unlearn_every`, any further `key=value` field that method key (e.g. `unlearn_batch_size=48`)."""
    if s.startswith("negate:"):  # forget-then-learn: negate:steps:lr:scale (pipeline/negation.py), no unlearning steps
        _, steps, lr, scale = s.split(":")
        return {"unlearn": "none", "negate_steps": int(steps), "negate_lr": float(lr), "negate_scale": float(scale)}
    optimizer, objective, x, *rest = s.split(":")
    size = "alpha" if optimizer in ("joint", "shared") else "unlearn_lr"
    keys = {"unlearn_optimizer": optimizer, "objective": objective, size: float(x)}
    if rest:
        keys["unlearn_every"] = int(rest[0])
    for kv in rest[1:]:
        k, v = kv.split("=", 1)
        keys[k] = yaml.safe_load(v)
    return keys


def one_project(proj: Path, settings: list[str], seeds: list[int]) -> dict:
    """{'vanilla' | 'control' | setting: {seed: scores}} and the project's lab seed."""
    with contextlib.chdir(proj):
        cfg = load_config("params.yaml")
        positive = cfg.confidence.auroc_positive
        conflict = [r for t in positive for r in nll_sets(cfg)[f"self/{t}"]]
        learn, _, guard_rows = run_rows(cfg, cfg.methods["vanilla"])
        base, tok = load_model(str(paths.BASE_MODEL), cfg.model, device="cpu")
        control, _ = load_model(str(paths.CONTROL_BASE_MODEL), cfg.model, device="cpu")
        oracle = cfg.methods["lwf_oracle"]
        oracles = {s: oracle_at(oracle, parse_setting(s)) for s in settings}
        d_u = run_rows(cfg, cfg.methods["lwf_oracle"])[1]
    learn_val, _, general = held_out(cfg, "validation")
    data = cfg.data.model_copy(update={"forget": []})  # forgetting scores are not this study's question

    def score(start, method, rows, seed):
        m = copy.deepcopy(start)
        _, stats = finetune(m, tok, learn, rows, cfg.finetune, method, seed, cfg.data.max_length, cfg.model.add_bos,
                            guard_rows=guard_rows)
        r = evaluate_model(m, tok, data, learn_val, {}, general, cfg.evaluate, cfg.model.add_bos, {"conflict": conflict})
        return {"conflict": r["nll"]["conflict"], "ppl": r["perplexity"], "learn": r["learn_score"],
                "taken": stats["unlearn_steps_taken"], "scheduled": stats["unlearn_steps_scheduled"]}

    out = {"lab_seed": cfg.model.lab.seed, "n_conflict": len(conflict), "n_d_u": len(d_u),
           "vanilla": {s: score(base, cfg.methods["vanilla"], [], s) for s in seeds},
           "control": {s: score(control, cfg.methods["vanilla"], [], s) for s in seeds}}
    for name, method in oracles.items():
        t0 = time.time()
        out[name] = {s: score(base, method, d_u, s) for s in seeds}
        print(f"{proj.name} {name}: conflicting NLL {mean(out[name], 'conflict'):.3f} (vanilla "
              f"{mean(out['vanilla'], 'conflict'):.3f}, control {mean(out['control'], 'conflict'):.3f}), perplexity "
              f"{mean(out[name], 'ppl'):.3f} (vanilla {mean(out['vanilla'], 'ppl'):.3f}), {time.time() - t0:.0f} s",
              file=sys.stderr, flush=True)
    return out


def mean(by_seed: dict, key: str) -> float:
    return float(np.mean([r[key] for r in by_seed.values()]))


def verdict(res: dict, setting: str) -> dict:
    """One project, one setting: the figures the rule reads."""
    van, ctl, orc = (mean(res[k], "conflict") for k in ("vanilla", "control", setting))
    ppl = mean(res[setting], "ppl") / mean(res["vanilla"], "ppl") - 1
    return {"nll": orc, "vanilla": van, "control": ctl, "closed": (orc - van) / (ctl - van) if ctl != van else np.nan,
            "ppl": ppl, "learn": mean(res[setting], "learn") - mean(res["vanilla"], "learn"),
            "removes": orc >= ctl and ppl <= 0.05,
            "taken": sum(r["taken"] for r in res[setting].values()),
            "scheduled": sum(r["scheduled"] for r in res[setting].values())}


def choose(results: list[dict], settings: list[str]) -> str | None:
    """The rule in the module docstring: removes in every project, then the least mean perplexity rise."""
    ok = [s for s in settings if all(verdict(r, s)["removes"] for r in results)]
    return min(ok, key=lambda s: (np.mean([verdict(r, s)["ppl"] for r in results]), settings.index(s))) if ok else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("projects", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=SETTINGS,
                    help="unlearn_optimizer:objective:size[:unlearn_every] (size: unlearn_lr, or alpha for joint)")
    ap.add_argument("--log", help="also write the printed tables to this file (the study's record)")
    a = ap.parse_args()
    results = [one_project(p.resolve(), a.settings, a.seeds) for p in a.projects]
    with log_to(a.log):
        report(results, a)


def report(results: list[dict], a) -> None:
    rows = []
    for r in results:
        for s in a.settings:
            v = verdict(r, s)
            rows.append([r["lab_seed"], s, f"{v['vanilla']:.3f} / {v['nll']:.3f} / {v['control']:.3f}",
                         f"{v['closed']:.2f}", f"{100 * v['ppl']:+.1f}%", f"{v['learn']:+.3f}",
                         f"{v['taken']} / {v['scheduled']}", "yes" if v["removes"] else "no"])
    table(f"lwf_oracle under each unlearning step, validation rows, mean over fine-tuning seeds {a.seeds} "
          f"({results[0]['n_d_u']} D_U rows of {results[0]['n_conflict']} conflicting ones); {machine()}",
          ["lab seed", "optimizer:objective:lr", "conflicting NLL: vanilla / lwf_oracle / control",
           "share of the control's gap closed", "perplexity vs vanilla", "learning score vs vanilla",
           "unlearning steps taken", "removes"], rows)
    summary = [[s, f"{sum(verdict(r, s)['removes'] for r in results)} of {len(results)}",
                f"{min(verdict(r, s)['closed'] for r in results):.2f}",
                f"{100 * np.mean([verdict(r, s)['ppl'] for r in results]):+.1f}%",
                f"{np.mean([verdict(r, s)['learn'] for r in results]):+.3f}"] for s in a.settings]
    table("Per setting over the projects", ["optimizer:objective:lr", "removes in", "gap closed (min)",
                                            "perplexity vs vanilla (mean)", "learning score vs vanilla (mean)"], summary)
    chosen = choose(results, a.settings)
    print(f"\nChosen by the rule: {chosen}" if chosen else "\nChosen by the rule: none (no setting removes in every project)")


if __name__ == "__main__":
    main()
