"""Aggregation over seeds, paired bootstrap intervals against vanilla, the markdown report and plots.

Paired bootstrap (two levels): a replicate resamples seeds with replacement (a method and vanilla
share each seed) and test items with replacement (the same items for both), then averages the
per-item differences. Perplexity is resampled the same way over held-out *sequences*: a
replicate recomputes exp(sum NLL / sum tokens) of the drawn sequences for both models. The 95%
interval is the 2.5th-97.5th percentile of B replicates. With one seed the seed level is
degenerate and the interval only reflects test-set sampling.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

METRICS = ("learn_score", "forget_score", "perplexity", "d_u_nll")


def _draws(S: int, N: int, n_boot: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, S, size=(n_boot, S)), rng.integers(0, N, size=(n_boot, N))


def paired_bootstrap(diff: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """diff: (n_seeds, n_items) paired differences. Returns (mean, lo95, hi95)."""
    diff = np.atleast_2d(np.asarray(diff, dtype=float))
    si, ii = _draws(*diff.shape, n_boot, seed)
    reps = np.array([diff[si[b]][:, ii[b]].mean() for b in range(n_boot)])
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def perplexity_bootstrap(nll_a: np.ndarray, nll_b: np.ndarray, tokens: np.ndarray, n_boot: int,
                         seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap of mean-over-seeds perplexity(a) - perplexity(b). nll_*: (n_seeds, n_seqs)
    summed NLL per held-out sequence; tokens: (n_seqs,) counted tokens (the same for a and b)."""
    nll_a, nll_b = np.atleast_2d(nll_a), np.atleast_2d(nll_b)
    tokens = np.asarray(tokens, dtype=float)

    def ppl(nll, si, ii):
        return np.exp(nll[si][:, ii].sum(1) / tokens[ii].sum()).mean()

    S, N = nll_a.shape
    every = (np.arange(S), np.arange(N))
    si, ii = _draws(S, N, n_boot, seed)
    reps = np.array([ppl(nll_a, si[b], ii[b]) - ppl(nll_b, si[b], ii[b]) for b in range(n_boot)])
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(ppl(nll_a, *every) - ppl(nll_b, *every)), float(lo), float(hi)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _items(res: dict, metric: str) -> np.ndarray:
    if metric == "learn_score":
        return np.asarray(res["items"]["learn"], dtype=float)
    if metric == "d_u_nll":
        return np.asarray(res["items"]["nll/d_u"], dtype=float)
    if metric == "forget_score":
        parts = [np.asarray(v, dtype=float) for k, v in res["items"].items() if k.startswith("forget/")]
        # forget_score is the mean of per-task means: weight items so their mean equals it
        return np.concatenate([p / (len(p) * len(parts)) * sum(len(q) for q in parts) for p in parts]) if parts else np.zeros(1)
    return np.asarray([res[metric]], dtype=float)


def summarize(evals: dict[str, dict], seeds: list[int], n_boot: int, seed: int = 0) -> dict:
    """evals: method -> {"seeds": {str(seed): result}}; 'vanilla' must be present."""
    out = {}
    van = evals["vanilla"]["seeds"]
    for method, ev in evals.items():
        per = ev["seeds"]
        row: dict = {}
        for metric in METRICS:
            vals = [per[str(s)].get(metric) for s in seeds]
            if any(v is None for v in vals):
                continue
            mean, std = _mean_std(vals)
            row[metric] = mean
            row[f"{metric}_std"] = std
            row[f"{metric}_seeds"] = vals
            if method != "vanilla" and all(van[str(s)].get(metric) is not None for s in seeds):
                if metric == "perplexity" and "general/nll" in per[str(seeds[0])]["items"]:
                    nll = [np.stack([e["seeds"][str(s)]["items"]["general/nll"] for s in seeds]) for e in (ev, evals["vanilla"])]
                    d, lo, hi = perplexity_bootstrap(*nll, van[str(seeds[0])]["items"]["general/tokens"], n_boot, seed)
                else:
                    diff = np.stack([_items(per[str(s)], metric) - _items(van[str(s)], metric) for s in seeds])
                    d, lo, hi = paired_bootstrap(diff, n_boot, seed)
                row[f"{metric}_delta"] = d
                row[f"{metric}_delta_ci95"] = [lo, hi]
        nll_sets = per[str(seeds[0])].get("nll", {})
        if nll_sets:
            row["nll"] = {k: float(np.mean([per[str(s)]["nll"][k] for s in seeds])) for k in nll_sets}
        tasks = per[str(seeds[0])].get("forget_scores", {})
        if tasks:
            row["forget_scores"] = {t: float(np.mean([per[str(s)]["forget_scores"][t] for s in seeds])) for t in tasks}
        tr = [per[str(s)].get("train", {}) for s in seeds]
        row["pretrainings"] = 1  # every interval is over fine-tuning seeds and test items of ONE base model
        row["unlearn_steps_taken"] = [t.get("unlearn_steps_taken", 0) for t in tr]
        row["learn_steps"] = [t.get("learn_steps") for t in tr]
        row["optimizer_steps"] = [t.get("optimizer_steps") for t in tr]
        row["unlearn_stopped"] = sum(t.get("unlearn_stopped_at") is not None for t in tr)
        row["unlearn_steps_scheduled"] = [t.get("unlearn_steps_scheduled", 0) for t in tr]
        row["guard"] = [t.get("guard") for t in tr]
        out[method] = row
    return out


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _delta(r: dict, metric: str) -> str:
    """'+0.012 [-0.003, +0.027] (noise)' for a method's paired delta vs vanilla, '—' if none."""
    if f"{metric}_delta" not in r:
        return "—"
    lo, hi = r[f"{metric}_delta_ci95"]
    flag = " (noise)" if lo <= 0 <= hi else ""
    return f"{r[f'{metric}_delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]{flag}"


def _steps(r: dict) -> str:
    """Unlearning steps taken of those scheduled, per seed ('15/15, 4/15'), '—' for a method without."""
    sched = r.get("unlearn_steps_scheduled") or []
    if not any(sched):
        return "—"
    return ", ".join(f"{t}/{n}" for t, n in zip(r.get("unlearn_steps_taken", []), sched))


def guard_lines(summary: dict, seeds: list[int]) -> list[str]:
    """The guard's decisions in words: for each unlearning method, which guard and its bound, then one
    sentence per seed: at which learning step (of how many) it stopped unlearning and why, and how many
    of the scheduled unlearning steps were taken (pipeline/guard.py)."""
    out = []
    for m, r in summary.items():
        guards = [g for g in r.get("guard", []) if g]
        sched = r.get("unlearn_steps_scheduled", [])
        if not guards or not any(sched):
            continue
        g0 = guards[0]
        what = "perplexity" if "largest_ppl_rise" in g0 else "NLL"  # (runs before 2026-12-07: the NLL's relative rise)
        total = f" or +{100 * g0['max_total_rise']:.0f}% over all steps" if g0.get("max_total_rise") else ""
        bound = {"graceful": f"a rise of the guard rows' {what} above +{100 * (g0.get('max_rise') or 0):.0f}% per step{total}",
                 "absolute": f"a D_U batch NLL above {g0.get('max_loss')}", "none": "a non-finite NLL only"}[g0["kind"]]
        n_stops = sum(1 for g in r["guard"] if g and g.get("stopped_at") is not None)
        verdict = f"stopped unlearning in {n_stops} of {len(guards)} seeds" if n_stops else "never stopped unlearning"
        out.append(f"- {m}: guard `{g0['kind']}` (stops on {bound}) {verdict}:")
        taken, learn = r.get("unlearn_steps_taken", []), r.get("learn_steps", [])
        for i, (s, g) in enumerate(zip(seeds, r["guard"])):
            if not g:
                continue
            out.append(f"  - {_guard_sentence(m, s, g, _at(taken, i), _at(sched, i), _at(learn, i))}")
    return ["", "Unlearning guard:", ""] + out if out else []


def _at(xs: list, i: int):
    return xs[i] if i < len(xs) else None


def _guard_sentence(method: str, seed: int, g: dict, taken, scheduled, learn_steps) -> str:
    """'lwf seed 1: unlearning stopped at learning step 37 of 40: <the guard's reason>; 8 of 10 scheduled
    unlearning steps taken.' or 'lwf seed 0: took all 10 scheduled unlearning steps (largest rise ...).'"""
    head = f"{method} seed {seed}:"
    if g.get("stopped_at") is not None:
        of = f" of {learn_steps}" if learn_steps is not None else ""
        return (f"{head} unlearning stopped at learning step {g['stopped_at']}{of}: {g.get('reason') or 'no reason recorded'}; "
                f"{taken} of {scheduled} scheduled unlearning steps taken.")
    what, rise = ("perplexity", g["largest_ppl_rise"]) if "largest_ppl_rise" in g else ("NLL", g.get("largest_rise"))
    why = ""
    if g.get("kind") == "graceful" and rise is not None:
        why = (f" (the largest rise of the guard rows' {what} after one was {100 * rise:+.1f}%, "
               f"bound +{100 * (g.get('max_rise') or 0):.0f}%")
        if g.get("total_ppl_rise") is not None:
            why += f"; all steps together {100 * g['total_ppl_rise']:+.1f}%"
        why += ")"
    if taken is not None and scheduled is not None and taken < scheduled:
        return f"{head} the guard never stopped unlearning; {taken} of {scheduled} scheduled unlearning steps taken{why}."
    return f"{head} took all {scheduled} scheduled unlearning steps{why}."


def summary_line(method: str, r: dict) -> str:
    """One method of metrics/summary.json on one line, every number rounded (the report stage's log line and
    `lwf report`): 'lwf          learn 0.300 ± 0.020  Δ learn +0.035 [+0.010, +0.060]  Δ forget ...  Δ ppl ...'."""
    line = f"{method:<16} learn {_fmt(r.get('learn_score'))} ± {_fmt(r.get('learn_score_std'))}"
    for metric, name in (("learn_score", "learn"), ("forget_score", "forget"), ("perplexity", "ppl")):
        if f"{metric}_delta" in r:
            line += f"  Δ {name} {_delta(r, metric)}"
    return line


SCORING = {"generate": "greedy generation + answer extraction",
           "loglik": "log-likelihood ranking of the options (lm-evaluation-harness convention)",
           "perplexity": "perplexity of the held-out text"}


def scoring_line(scoring: dict[str, str]) -> str:
    """'Scoring: learn/gsm8k by ...; forget/qasc by ...' from an eval result's `scoring`."""
    return "Scoring: " + "; ".join(f"{k} by {SCORING.get(v, v)}" for k, v in scoring.items()) + "."


def markdown(summary: dict, seeds: list[int], confidence: dict | None, notes: list[str],
             scoring: dict[str, str] | None = None) -> str:
    lines = [
        "# LWF comparison", "",
        *([scoring_line(scoring), ""] if scoring else []),
        f"Seeds: {seeds}. Mean ± std over seeds; delta = method − vanilla with a paired bootstrap 95% interval "
        "(seeds and test items resampled). A delta whose interval contains 0 is **within the noise**. "
        "The intervals cover ONE pretraining of the base model (one `base_model` run): they do not include the "
        "variation between pretrainings (for the embedded lab, see docs/results-lab.md: the results over lab seeds).", "",
        "| method | learn score | Δ learn vs vanilla [95% CI] | forget score | Δ forget | perplexity | Δ ppl | unlearn steps taken/scheduled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in summary.items():
        lines.append(
            f"| {m} | {_fmt(r.get('learn_score'))} ± {_fmt(r.get('learn_score_std'))} | {_delta(r, 'learn_score')} "
            f"| {_fmt(r.get('forget_score'))} ± {_fmt(r.get('forget_score_std'))} | {_delta(r, 'forget_score')} "
            f"| {_fmt(r.get('perplexity'))} ± {_fmt(r.get('perplexity_std'))} | {_delta(r, 'perplexity')} "
            f"| {_steps(r)} |")
    tasks = sorted({t for r in summary.values() for t in r.get("forget_scores", {})})
    if tasks:
        lines += ["", "Forgetting-task scores per task (mean over seeds):", "",
                  "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        lines += [f"| {m} | " + " | ".join(_fmt(r.get("forget_scores", {}).get(t)) for t in tasks) + " |"
                  for m, r in summary.items()]
    sets = sorted({k for r in summary.values() for k in r.get("nll", {})}, key=lambda k: (k != "d_u", k != "own_d_u", k))
    if sets:
        lines += ["", "Mechanism: mean NLL of self-generated sets under each fine-tuned model (higher = more "
                  "unlearned; `d_u` = lwf's D_U, `own_d_u` = the method's own D_U, `self/<task>` = all of a "
                  "forgetting task's self-knowledge). Δ d_u vs vanilla with its paired 95% CI.", "",
                  "| method | optimizer steps | " + " | ".join(sets) + " | Δ d_u vs vanilla |",
                  "|---|---|" + "---|" * (len(sets) + 1)]
        for m, r in summary.items():
            if "nll" not in r:
                continue
            steps = sorted({x for x in r.get("optimizer_steps", []) if x is not None})
            lines.append(f"| {m} | {', '.join(map(str, steps)) or '—'} | " +
                         " | ".join(_fmt(r["nll"].get(k)) for k in sets) + f" | {_delta(r, 'd_u_nll')} |")
    lines += guard_lines(summary, seeds)
    lines.append("")
    lines.append("Per-seed learning scores: " + "; ".join(
        f"{m}: {', '.join(_fmt(v) for v in r.get('learn_score_seeds', []))}" for m, r in summary.items()))
    if confidence and "auroc" in confidence:
        lines += ["", f"Confidence AUROC ({', '.join(confidence['auroc_positive'])} vs "
                  f"{', '.join(confidence['auroc_negative'])}): " +
                  ", ".join(f"{k} {_fmt(v)}" for k, v in confidence["auroc"].items())]
        for neg, au in confidence.get("auroc_by_negative", {}).items():
            lines.append(f"- vs {neg} alone: " + ", ".join(f"{k} {_fmt(v)}" for k, v in au.items()))
        if "positive_share_of_selection" in confidence:
            lines.append("- share of D_U from the positive tasks, per selection rule: " + ", ".join(
                f"{k} {_fmt(v, 2)}" for k, v in confidence["positive_share_of_selection"].items()))
    lines += [""] + notes + ["", "Plots: learning_curves.png, confidence_hist.png, methods.png (this folder)."]
    return "\n".join(lines) + "\n"


def merge_lm_eval(method: str, per_task: list[dict]) -> dict:
    """One method's lm_eval results, one per listed task (artifacts/eval/lm_eval/<method>/<task>/
    results.json), as one: the tasks in listed order, the first one's settings, and per seed the
    union of every task's entries (a group brings its subtasks)."""
    out: dict = {"method": method, "tasks": [r["task"] for r in per_task],
                 "settings": per_task[0]["settings"] if per_task else {}, "seeds": {}}
    for r in per_task:
        for s, res in r["seeds"].items():
            merged = out["seeds"].setdefault(s, {})
            for key, value in res.items():
                if isinstance(value, dict):
                    merged.setdefault(key, {}).update(value)
                else:  # lm_eval_version
                    merged.setdefault(key, value)
    return out


def summarize_lm_eval(evals: dict[str, dict], seeds: list[int], n_boot: int, seed: int = 0) -> dict:
    """evals: method -> its lm_eval results (`merge_lm_eval` of its tasks); 'vanilla'
    must be present. Returns method -> task -> metric -> {mean, std, seeds, stderr (lm-eval's, mean
    over seeds), stderr_seeds, n (docs), delta, delta_ci95}; {} when no task was listed. The delta
    is paired like every other score (seeds and docs resampled); where lm-eval keeps no per-doc
    value (a group, a metric that is not a mean over docs) it is the difference of the means, with
    no interval."""
    if not any(ev.get("tasks") for ev in evals.values()):
        return {}
    van = evals["vanilla"]["seeds"]
    out: dict = {}
    for method, ev in evals.items():
        per = ev["seeds"]
        out[method] = {}
        for task, metrics in per[str(seeds[0])]["results"].items():
            out[method][task] = {}
            for name in metrics:
                got = [per[str(s)]["results"][task][name] for s in seeds]
                mean, std = _mean_std([g["value"] for g in got])
                errs = [g["stderr"] for g in got]
                r = {"mean": mean, "std": std, "seeds": [g["value"] for g in got],
                     "stderr": float(np.mean(errs)) if None not in errs else None, "stderr_seeds": errs,
                     "n": per[str(seeds[0])]["n_samples"].get(task, {}).get("effective")}
                if method != "vanilla" and all(name in van[str(s)]["results"].get(task, {}) for s in seeds):
                    mine = [per[str(s)]["items"].get(task, {}).get(name) for s in seeds]
                    base = [van[str(s)]["items"].get(task, {}).get(name) for s in seeds]
                    if all(a is not None and b is not None and len(a) == len(b) for a, b in zip(mine, base)):
                        d, lo, hi = paired_bootstrap(np.asarray(mine) - np.asarray(base), n_boot, seed)
                        r["delta"], r["delta_ci95"] = d, [lo, hi]
                    else:
                        r["delta"] = mean - float(np.mean([van[str(s)]["results"][task][name]["value"] for s in seeds]))
                out[method][task][name] = r
    return out


def lm_eval_markdown(summary: dict, evals: dict[str, dict]) -> str:
    """The report's lm-evaluation-harness section ('' when no task was listed)."""
    if not summary:
        return ""
    first = next(iter(evals["vanilla"]["seeds"].values()))
    settings = evals["vanilla"].get("settings", {})
    shots = ", ".join(f"{t} {k}-shot" for t, k in sorted(first.get("n_shot", {}).items()))
    lines = ["", "## lm-evaluation-harness", "",
             f"lm-eval {first.get('lm_eval_version') or ''} on every seed's model ({shots}; limit "
             f"{settings.get('limit')}; chat template {'on' if settings.get('apply_chat_template') else 'off'}). "
             "Mean ± std over seeds; stderr = lm-eval's standard error over the task's docs for one model (mean "
             "over seeds); Δ vs vanilla with the paired bootstrap 95% interval of the tables above (seeds and docs "
             "resampled; no interval where lm-eval keeps no per-doc value, e.g. a group). Per-sample outputs: "
             "artifacts/eval/lm_eval/<method>/<listed task>/samples/seed<k>/<task>.jsonl.", "",
             "| method | task | metric | docs | score | lm-eval stderr | Δ vs vanilla [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for m, tasks in summary.items():
        for task, metrics in tasks.items():
            for name, r in metrics.items():
                if "delta_ci95" in r:
                    lo, hi = r["delta_ci95"]
                    delta = f"{r['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" (noise)" if lo <= 0 <= hi else "")
                else:
                    delta = f"{r['delta']:+.3f} (no interval)" if "delta" in r else "—"
                lines.append(f"| {m} | {task} | {name} | {r['n'] if r['n'] is not None else '—'} | {_fmt(r['mean'])} ± "
                             f"{_fmt(r['std'])} | {_fmt(r['stderr'])} | {delta} |")
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib with the file-only backend (stages run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(logs: dict[str, list[pd.DataFrame]], path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (m, frames) in enumerate(logs.items()):
        learn = pd.concat([f[f["kind"] == "learn"] for f in frames])
        if learn.empty:  # a method that does not fine-tune (train: false)
            continue
        curve = learn.groupby("step")["loss"].agg(["mean", "std"]).fillna(0)
        color = f"C{i}"
        ax.plot(curve.index, curve["mean"], label=m, color=color, lw=1.2)
        ax.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"], color=color, alpha=0.15)
        un = frames[0][frames[0]["kind"] == "unlearn"]["step"].to_numpy()
        if len(un):
            ax.plot(un, np.full(len(un), 0.03 + 0.03 * i), "|", color=color, ms=6,
                    transform=ax.get_xaxis_transform())
    ax.set_xlabel("learning step (ticks at the bottom: unlearning steps of seed 0, one row per method)")
    ax.set_ylabel("learning-task training loss (mean ± std over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confidence(df: pd.DataFrame, path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    conf = df["confidence"].to_numpy()
    positive = bool((conf > 0).all())
    bins = np.geomspace(conf.min(), conf.max(), 41) if positive else np.histogram_bin_edges(conf, bins=40)
    for task, g in df.groupby("forget_task"):
        ax.hist(g["confidence"], bins=bins, alpha=0.55, label=f"{task} ({int(g['selected'].sum())}/{len(g)} selected)")
    if df["selected"].any():
        cut = df.loc[df["selected"], "confidence"].min()
        ax.axvline(cut, color="k", ls="--", lw=1, label="selection cut")
    if positive:
        ax.set_xscale("log")
    ax.set_xlabel("forgetting confidence" + (" (log scale)" if positive else ""))
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_methods(summary: dict, path) -> None:
    plt = _pyplot()
    metrics = [m for m in METRICS if any(m in r for r in summary.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6))
    names = list(summary)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        means = [summary[n].get(metric, np.nan) for n in names]
        stds = [summary[n].get(f"{metric}_std", 0) for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(names))])
        for i, n in enumerate(names):
            vals = summary[n].get(f"{metric}_seeds", [])
            ax.plot([i] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
