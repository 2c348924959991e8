"""The conflict preset's tables from a finished `dvc repro` of presets/smollm2_cpu_conflict.yaml
(run as the README says, in a fresh clone), read from that project, with the wall time and each
stage's own timer from the run's log; `--seeds-for N` projects the wall time of N seeds from a run
of fewer. The test run is scored on SST-5's test split; a run whose params.yaml holds the
validation split (conflict_validation.py --write-params) says so in its title.

The run (nothing here chooses anything: every size and rate was chosen on validation,
conflict_validation.py and negative_transfer.py):

    git clone <repo> /tmp/fresh && cd /tmp/fresh && <the README's install lines>
    lwf preset smollm2_cpu_conflict && /usr/bin/time -v -o time.log dvc repro > repro.log 2>&1

then, from this repository:

    python experiments/positive_control/conflict_test.py --project /tmp/fresh \
        --out docs/results/smollm2_cpu_conflict --log docs/results/smollm2_cpu_conflict/results.md.log
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from conflict_validation import per_seed  # noqa: E402  (this folder: sys.path[0] of a script)
from experiments._common import interval, log_to, side, table  # noqa: E402

CONTROL = "control"


def stage_timers(log: str) -> dict[str, float]:
    """Seconds per dvc.yaml stage: each stage's own 'stage NAME: done in S s' line, credited to the
    stage DVC last said it was running."""
    out: dict[str, float] = defaultdict(float)
    current = None
    for line in log.splitlines():
        if m := re.search(r"Running stage '([^']+)'", line):
            current = m.group(1)
        elif (m := re.search(r"stage \S+: done in ([0-9.]+)s", line)) and current:
            out[current] += float(m.group(1))
    return dict(out)


def wall_seconds(time_log: str) -> float | None:
    """The elapsed wall time of a `/usr/bin/time -v` report."""
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([0-9.]+)", time_log)
    if not m:
        return None
    return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def per_seed_stage(name: str) -> bool:
    """Stages whose work is one model per seed: the fine-tunes and evaluations (base's are free or
    scored once)."""
    return name.startswith(("finetune", "evaluate")) and not name.endswith("@base")


def projection(timers: dict[str, float], wall: float, seeds: int, target: int) -> str:
    """The wall time of `target` seeds from a run of `seeds`: the per-seed stages' timers scaled by
    target/seeds, everything else (the fixed stages, DVC and process start-up) as measured."""
    scaled = sum(v for k, v in timers.items() if per_seed_stage(k))
    est = wall + scaled * (target / seeds - 1)
    return (f"Projected for {target} seeds from these {seeds}: {est:.0f} s ({est / 60:.0f} min): the fine-tunes and "
            f"evaluations ({scaled:.0f} s here) x{target / seeds:g}, the rest ({wall - scaled:.0f} s) as measured")


def mean_sd(xs: list[float]) -> str:
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.3f}"


def delta(r: dict, key: str) -> str:
    if f"{key}_delta" not in r:
        return "-"
    lo, hi = r[f"{key}_delta_ci95"]
    return f"{interval(r[f'{key}_delta'], lo, hi)} ({side(lo, hi)})"


def length_auroc(proj: Path, conf: dict) -> float:
    """The AUROC of the answer's length alone (n_tokens), positive vs negative tasks of the confidence table."""
    import pandas as pd

    from pipeline.confidence import auroc

    df = pd.read_parquet(proj / "artifacts/confidence.parquet")
    sub = df[df["forget_task"].isin(conf["auroc_positive"] + conf["auroc_negative"])]
    return auroc(sub["n_tokens"], sub["forget_task"].isin(conf["auroc_positive"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", required=True, help="the finished project (a fresh clone after `dvc repro`)")
    ap.add_argument("--out", help="copy report.md, summary.json and confidence.json here")
    ap.add_argument("--seeds-for", type=int, help="also project the wall time of this many seeds from the timers "
                    "(a run with fewer seeds: each stage that loops over the seeds scaled, the rest as measured)")
    ap.add_argument("--log")
    a = ap.parse_args(argv)
    proj = Path(a.project)
    summary = json.loads((proj / "metrics/summary.json").read_text())
    conf = json.loads((proj / "metrics/confidence.json").read_text())
    if "n_tokens" not in conf["auroc"]:  # a run before the confidence stage reported the length baseline
        conf["auroc"]["n_tokens"] = length_auroc(proj, conf)
    methods = [m for m in summary if m not in ("base", "vanilla", CONTROL)]
    order = ["base", "vanilla", CONTROL, *methods]
    tasks = list(summary["vanilla"]["forget_scores"])
    seeds = len(summary["vanilla"]["learn_score_seeds"])
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(proj / "reports/report.md", out / "report.md")
        for f in ("summary.json", "confidence.json"):
            shutil.copy(proj / "metrics" / f, out / f)
    with log_to(a.log):
        commit = subprocess.run(["git", "-C", str(proj), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "(not a git clone)"
        split = yaml.safe_load((proj / "params.yaml").read_text())["data"]["learn"].get("options", {}).get(
            "test_split", "test")
        print(f"## presets/smollm2_cpu_conflict.yaml scored on SST-5's {split.upper()} split, {seeds} seed(s), "
              f"a fresh clone at {commit}\n")
        wall = wall_seconds((proj / "time.log").read_text()) if (proj / "time.log").exists() else None
        print(f"dvc repro wall time: {wall:.0f} s ({wall / 60:.1f} min)" if wall else "dvc repro wall time: not recorded")
        print(f"learning steps per seed (vanilla): {summary['vanilla']['learn_steps']}\n")
        rows = []
        for m in order:
            r = summary[m]
            rows.append([m, mean_sd(r["learn_score_seeds"]), delta(r, "learn_score"),
                         *[mean_sd(per_seed(proj, m, lambda s, t=t: s["forget_scores"][t])) for t in tasks],
                         delta(r, "forget_score")])
        table(f"Learning and forgetting scores, mean ± sd over {seeds} seeds; Δ paired with vanilla over seeds and "
              "rows, 95% bootstrap interval ((+)/(-): above/below 0, (0): noise); the control's learn score is on "
              "its nonce words", ["method", "learn acc", "Δ learn vs vanilla", *[f"{t} acc" for t in tasks],
                                 "Δ mean forget acc vs vanilla"], rows)
        rows = []
        for m in order:
            r = summary[m]
            sent = [np.mean(per_seed(proj, m, lambda s, t=t: s["nll"][f"self/{t}"])) for t in tasks] \
                if all(f"self/{t}" in r["nll"] for t in tasks) else ["-"] * len(tasks)
            sched = r.get("unlearn_steps_scheduled") or []
            steps = f"{sum(r['unlearn_steps_taken'])}/{sum(sched)}" if sched and sum(sched) else "-"
            rows.append([m, mean_sd(r["perplexity_seeds"]), delta(r, "perplexity"), mean_sd(r["d_u_nll_seeds"]),
                         delta(r, "d_u_nll"), *[f"{x:.3f}" if x != "-" else x for x in sent], steps])
        table("General-text perplexity, NLL of lwf's D_U and of each task's self-knowledge (mean over seeds), "
              "unlearning steps taken of scheduled", ["method", "perplexity", "Δ perplexity", "D_U NLL", "Δ D_U NLL",
                                                      *[f"self/{t} NLL" for t in tasks], "unlearning steps"], rows)
        c = summary[CONTROL]
        lo, hi = c["learn_score_delta_ci95"]
        print(f"\nNegative transfer (control - vanilla, learn accuracy): {interval(c['learn_score_delta'], lo, hi)}: "
              f"{'above 0' if side(lo, hi) == '+' else 'not above 0'}")
        for m in ("lwf", "lwf_oracle", "forget_then_learn"):
            if m in summary:
                lo, hi = summary[m]["learn_score_delta_ci95"]
                print(f"- {m} - vanilla: half-width of the 95% interval {(hi - lo) / 2:.3f}")
        print()
        table(f"AUROC of each confidence score, sentiment vs psychology self-knowledge ({conf['n_samples']} samples; "
              f"default score {conf['score']})", ["score", "AUROC"],
              [[k, f"{x:.3f}"] for k, x in sorted(conf["auroc"].items(), key=lambda kv: -kv[1])])
        print(f"\nShare of sentiment samples in D_U by selection: "
              f"{', '.join(f'{k} {x:.2f}' for k, x in conf['positive_share_of_selection'].items())}")
        if (proj / "repro.log").exists():
            timers = stage_timers((proj / "repro.log").read_text(errors="replace"))
            total = sum(timers.values())
            rows = [[k, f"{v:.0f}", f"{v / wall:.1%}" if wall else "-"] for k, v in
                    sorted(timers.items(), key=lambda kv: -kv[1])]
            if wall:
                rows.append(["(DVC, process start-up, imports, model loading)", f"{wall - total:.0f}",
                             f"{(wall - total) / wall:.1%}"])
            table("Where the time went: each stage's own timer", ["stage", "seconds", "share of wall"], rows)
            if a.seeds_for and wall:
                print(f"\n{projection(timers, wall, seeds, a.seeds_for)}")


if __name__ == "__main__":
    main()
