"""Does the embedded lab's story hold across pretraining seeds, thread counts (a proxy for another
machine's float kernels) and unlearning modes? Runs the real pipeline (`dvc repro`) in copies of
this project, one per (lab seed, threads), and for each `unlearn_optimizer` mode (set on every unlearning method) reruns
what that change touches. Prints one table per question.

    python experiments/lab_robustness/lab_robustness.py OUT_DIR [--lab-seeds 0 1 2] [--threads 2] \
        [--modes separate joint shared] [--set key=value ...] [--log FILE]

Per mode it also checks each component against the lab's ground truth (`ground_truth`): selection
(the default score's AUROC for the conflicting task, the conflicting share of lwf's D_U), action
(lwf's unlearning steps taken), removal (lwf_oracle's conflicting NLL against the control's, its
perplexity against vanilla's) and the end-to-end deltas. `--log` keeps the printout.

OUT_DIR keeps every run: a (lab seed, threads, mode) whose params and code are unchanged is not rerun, and
DVC reruns only what a mode change touches. Each cell is a
paired bootstrap over fine-tuning seeds and test items (`pipeline/report.py`); "held" counts the
runs in which a conclusion holds.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import (ROOT, apply_overrides, auroc_ci, interval, log_to, project_copy, setdeep, sh,  # noqa: E402
                                 side, table)

from pipeline.report import paired_bootstrap  # noqa: E402


def code_digest() -> str:
    """Hash of the code a run executes: a saved result is reused only for the same code and params."""
    h = hashlib.sha256()
    files = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py"), ROOT / "dvc.yaml"])
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def run(out: Path, lab_seed: int, threads: int, modes: list[str], overrides: list[str]) -> dict:
    proj = out / f"lab{lab_seed}-t{threads}"
    project_copy(proj, threads)  # today's code, every time
    results = {}
    for mode in modes:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        setdeep(raw, "model.lab.seed", lab_seed)
        for m in raw["methods"].values():  # every unlearning method (and vanilla_matched) under this mode
            if (m.get("unlearn", "none") == "periodic") or m.get("match_steps"):
                m["unlearn_optimizer"] = mode
        apply_overrides(raw, overrides)
        saved = proj / f"result-{mode}.json"
        code = code_digest()
        if saved.exists() and (old := json.loads(saved.read_text())).get("params") == raw and old.get("code") == code:
            results[mode] = json.loads(saved.read_text())
            continue
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"lab seed {lab_seed}, {threads} threads, {mode}: dvc repro", file=sys.stderr, flush=True)
        sh([sys.executable, "-m", "dvc", "repro"], proj, threads)
        res = {"summary": json.loads((proj / "metrics/summary.json").read_text()),
               "confidence": json.loads((proj / "metrics/confidence.json").read_text()),
               "evals": {m: json.loads((proj / f"artifacts/eval/{m}.json").read_text()) for m in raw["run"]["methods"]},
               "seeds": raw["run"]["seeds"], "params": raw, "code": code}
        saved.write_text(json.dumps(res))
        results[mode] = res
    return results


def paired(res: dict, a: str, b: str, metric: str = "learn") -> tuple[float, float, float]:
    """a - b, paired over fine-tuning seeds and test items."""
    ea, eb = res["evals"][a]["seeds"], res["evals"][b]["seeds"]
    diff = np.stack([np.asarray(ea[str(s)]["items"][metric]) - np.asarray(eb[str(s)]["items"][metric])
                     for s in res["seeds"]])
    return paired_bootstrap(diff, 2000, 0)


def fmt(d) -> str:
    m, lo, hi = d
    return interval(m, lo, hi) + (" (noise)" if lo <= 0 <= hi else "")


def distribution_rows(dist: dict) -> list[list]:
    """One row per quantity: mean, sd, range of the per-run point estimates and how many runs'
    intervals lie above 0, contain 0, lie below 0."""
    rows = []
    for k, vals in dist.items():
        pts = np.array([v[0] for v in vals])
        sd = f"{pts.std(ddof=1):.3f}" if len(pts) > 1 else "—"
        has_ci = vals[0][1] is not None
        counts = " / ".join(str(sum(side(lo, hi) == x for _, lo, hi in vals)) for x in "+0-") if has_ci else "—"
        f = "+.3f" if has_ci else ".3f"
        rows.append([k, f"{pts.mean():{f}}", sd, f"{pts.min():{f}}", f"{pts.max():{f}}", counts])
    return rows


def unlearning_curve_rows(projects: list[Path], seeds: list[int], methods=("lwf", "lwf_random", "lwf_oracle")):
    """Per unlearning step k, mean over runs and fine-tuning seeds of (a) the NLL of the D_U batch it
    ascends (measured before the step) and (b) the learning loss of the next learning step minus
    vanilla's at the same step (the same batch: the learning stream depends on the seed only), from the
    training logs the last `dvc repro` of each project wrote."""
    acc: dict = {}
    for proj in projects:
        for seed in seeds:
            van = pd.read_csv(proj / f"logs/train/vanilla/seed{seed}.csv")
            van = van[van["kind"] == "learn"].set_index("step")["loss"]
            for m in methods:
                log = pd.read_csv(proj / f"logs/train/{m}/seed{seed}.csv")
                learn = log[log["kind"] == "learn"].set_index("step")["loss"]
                for k, (_, u) in enumerate(log[log["kind"] == "unlearn"].iterrows(), 1):
                    nxt = int(u["step"]) + 1
                    if nxt in learn.index:
                        acc.setdefault((k, int(u["step"])), {}).setdefault(m, []).append(
                            (u["loss"], learn[nxt] - van[nxt]))
    rows = []
    for (k, step), by_m in sorted(acc.items()):
        row = [k, step]
        for m in methods:
            v = np.asarray(by_m.get(m, []))
            row += [f"{v[:, 0].mean():.2f}", f"{v[:, 1].mean():+.3f}"] if len(v) else ["—", "—"]
        rows.append(row)
    return rows


GROUND_TRUTH = ("selection: AUROC >= 0.90", "selection: conflicting share of D_U >= 0.8",
                "lwf took every scheduled unlearning step", "removal: oracle's conflicting NLL >= control's",
                "removal: oracle's perplexity within +5% of vanilla's")


def ground_truth(res: dict, auroc: tuple[float, float, float]) -> tuple[list, dict]:
    """One run's components against what the lab knows: selection (the default score's AUROC for
    the conflicting task, with its interval, and the conflicting share of lwf's D_U), action (lwf's
    unlearning steps taken of those scheduled, summed over seeds), removal (the NLL of the
    conflicting self-knowledge after vanilla, lwf_oracle and the control; the oracle's perplexity
    against vanilla's) and the end-to-end deltas. Returns the table row and each check's outcome."""
    summ, conf, p = res["summary"], res["confidence"], res["params"]
    positive = p["confidence"]["auroc_positive"]
    share = conf["positive_share_of_selection"][p["methods"]["lwf"].get("selection", "high")]

    def nll(m):  # mean NLL of the conflicting self-knowledge after method m (None if m did not run)
        return float(np.mean([summ[m]["nll"][f"self/{t}"] for t in positive])) if m in summ else None

    taken, scheduled = sum(summ["lwf"]["unlearn_steps_taken"]), sum(summ["lwf"]["unlearn_steps_scheduled"])
    van, orc, ctl = nll("vanilla"), nll("lwf_oracle"), nll("control")
    ppl = summ["lwf_oracle"]["perplexity"] / summ["vanilla"]["perplexity"] - 1 if orc is not None else None
    checks = dict(zip(GROUND_TRUTH, (auroc[0] >= 0.90, share >= 0.8, taken == scheduled,
                                     None if orc is None or ctl is None else orc >= ctl,
                                     None if ppl is None else ppl <= 0.05)))
    delta = lambda m: fmt((summ[m]["learn_score_delta"], *summ[m]["learn_score_delta_ci95"])) if m in summ else "—"
    row = [p["confidence"]["score"], f"{auroc[0]:.3f} [{auroc[1]:.2f}, {auroc[2]:.2f}]", f"{share:.2f}",
           f"{taken} / {scheduled}", " / ".join("—" if v is None else f"{v:.3f}" for v in (van, orc, ctl)),
           "—" if ppl is None else f"{100 * ppl:+.1f}%", delta("lwf"),
           fmt(paired(res, "lwf", "vanilla_matched")) if "vanilla_matched" in res["evals"] else "—",
           delta("control")]
    return row, checks


def ground_truth_tables(runs: dict, cis: dict, mode: str) -> None:
    """The ground-truth table (one row per run) and how many runs pass each check."""
    rows, passed = [], {}
    for (s, t), by_mode in runs.items():
        res = by_mode[mode]
        row, checks = ground_truth(res, cis[s, t][res["params"]["confidence"]["score"]])
        rows.append([s, t, *row])
        for k, v in checks.items():
            passed.setdefault(k, []).append(v)
    table(f"unlearn_optimizer = {mode}: each component against the lab's ground truth, per run "
          "(learning-score deltas paired over fine-tuning seeds and test items)",
          ["lab seed", "threads", "default score", "its AUROC [95% CI]", "conflicting share of D_U",
           "lwf unlearning steps taken / scheduled", "conflicting NLL: vanilla / lwf_oracle / control",
           "lwf_oracle perplexity vs vanilla", "lwf − vanilla", "lwf − vanilla_matched", "control − vanilla"], rows)
    table(f"unlearn_optimizer = {mode}: checks passed", ["check", "runs that pass"],
          [[k, f"{sum(v is True for v in vals)} of {len(vals)}" + ("" if None not in vals else " (not measurable in "
                                                                      f"{sum(v is None for v in vals)})")]
           for k, vals in passed.items()])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lab-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--modes", nargs="+", default=["separate", "joint", "shared"])
    ap.add_argument("--set", nargs="*", default=[], help="extra params overrides, key=value (YAML value)")
    ap.add_argument("--log", help="also write the printed tables to this file (the study's record)")
    a = ap.parse_args()
    with log_to(a.log):
        study(a)


def study(a):
    """The tables of the runs `main` parsed arguments for (printed, and kept by `--log`)."""
    out = Path(a.out).resolve()
    runs = {(s, t): run(out, s, t, a.modes, a.set) for s in a.lab_seeds for t in a.threads}

    first = next(iter(runs.values()))[a.modes[0]]
    methods = [m for m in first["summary"] if m not in ("vanilla", "control")]
    scores = list(first["confidence"]["auroc"])
    # the confidence table does not depend on the unlearning mode: one AUROC interval per run
    cis = {(s, t): auroc_ci(pd.read_parquet(out / f"lab{s}-t{t}/artifacts/confidence.parquet"),
                            by_mode[a.modes[0]]["params"]["confidence"]["auroc_positive"],
                            by_mode[a.modes[0]]["params"]["confidence"]["auroc_negative"])
           for (s, t), by_mode in runs.items()}
    for mode in a.modes:
        rows, held, dist = [], {}, {}
        for (s, t), by_mode in runs.items():
            res = by_mode[mode]
            summ = res["summary"]
            row = [s, t, f"{summ['vanilla']['learn_score']:.3f}"]
            dist.setdefault("vanilla", []).append((summ["vanilla"]["learn_score"], None, None))
            c = summ.get("control", {})
            if "learn_score_delta_ci95" in c:
                row.append(fmt((c["learn_score_delta"], *c["learn_score_delta_ci95"])))
                dist.setdefault("control Δ", []).append((c["learn_score_delta"], *c["learn_score_delta_ci95"]))
                held.setdefault("negative transfer (control > vanilla)", []).append(
                    side(*c["learn_score_delta_ci95"]) == "+")
            else:
                row.append("—")
            for m in methods:
                d = (summ[m]["learn_score_delta"], *summ[m]["learn_score_delta_ci95"])
                row.append(fmt(d))
                dist.setdefault(f"{m} Δ", []).append(d)
            if {"lwf_oracle", "lwf_random"} <= set(res["evals"]):
                d = paired(res, "lwf_oracle", "lwf_random")
                row.append(fmt(d))
                dist.setdefault("oracle − random", []).append(d)
                held.setdefault("oracle vs random: sign", []).append(side(*d[1:]))
            if "lwf_oracle" in summ:
                held.setdefault("oracle > vanilla", []).append(side(*summ["lwf_oracle"]["learn_score_delta_ci95"]) == "+")
            for m in ("lwf", "lwf_oracle"):
                if "perplexity_delta_ci95" in summ.get(m, {}):
                    dist.setdefault(f"{m} perplexity Δ", []).append(
                        (summ[m]["perplexity_delta"], *summ[m]["perplexity_delta_ci95"]))
                if "forget_score_delta_ci95" in summ.get(m, {}):
                    dist.setdefault(f"{m} forget score Δ", []).append(
                        (summ[m]["forget_score_delta"], *summ[m]["forget_score_delta_ci95"]))
            du = summ["lwf"].get("d_u_nll_delta_ci95")
            if du:
                row.append(f"{summ['vanilla']['d_u_nll']:.2f} → {summ['lwf']['d_u_nll']:.2f}")
                held.setdefault("lwf's D_U NLL above vanilla's", []).append(du[0] > 0)
            rows.append(row)
            for sc in scores:
                held.setdefault(f"AUROC {sc} side of 0.5 (0 = 95% interval contains 0.5)", []).append(
                    side(*cis[s, t][sc][1:], at=0.5))
        extra = (["oracle − random"] if "lwf_oracle" in methods and "lwf_random" in methods else []) + ["NLL of lwf's D_U: vanilla → lwf"]
        table(f"unlearn_optimizer = {mode}: learning score, Δ vs vanilla [95% CI] per run",
              ["lab seed", "threads", "vanilla", "control Δ", *[f"{m} Δ" for m in methods], *extra], rows)
        summary_rows = []
        for k, v in held.items():
            vals = [str(x) for x in v]
            # one machine's runs: a conclusion is called stable only once it held on another machine too
            summary_rows.append([k, ", ".join(vals), f"held in {len(vals)} of {len(vals)} runs (one machine)"
                                 if len(set(vals)) == 1 else "differs between runs"])
        table(f"unlearn_optimizer = {mode}: conclusions per run", ["conclusion", "per run", "across these runs"],
              summary_rows)
        ground_truth_tables(runs, cis, mode)
        table(f"unlearn_optimizer = {mode}: distribution over the {len(runs)} runs (point estimates; "
              "above / noise / below = runs whose 95% interval is above 0, contains 0, is below 0)",
              ["quantity", "mean", "sd", "min", "max", "above / noise / below"], distribution_rows(dist))
    if len(a.modes) == 1:  # the logs on disk are those of the last mode run
        methods_u = [m for m in ("lwf", "lwf_random", "lwf_oracle") if m in methods]
        table(f"unlearn_optimizer = {a.modes[0]}: per unlearning step, the NLL of the D_U batch it ascends and the "
              "next learning step's loss minus vanilla's (same batch), mean over runs and fine-tuning seeds",
              ["unlearning step", "after learning step", *[f"{m} {c}" for m in methods_u
                                                          for c in ("D_U NLL", "learn loss − vanilla")]],
              unlearning_curve_rows([out / f"lab{s}-t{t}" for s, t in runs], first["seeds"], methods_u))
    rows = [[s, t, *[f"{ci[sc][0]:.3f} [{ci[sc][1]:.2f}, {ci[sc][2]:.2f}]" for sc in scores]]
            for (s, t), ci in cis.items()]
    table("Confidence AUROC [95% interval over samples], conflicting vs neutral self-knowledge (0.5 = chance)",
          ["lab seed", "threads", *scores], rows)


if __name__ == "__main__":
    main()
