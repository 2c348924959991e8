"""The conflict preset (presets/smollm2_cpu_conflict.yaml) through `dvc repro` on SST-5's VALIDATION
split, before its test run: is the negative transfer there inside the pipeline (control - vanilla,
the control being the base model learning the same rows with nonce words), does the default
confidence find the conflicting self-knowledge (AUROC, sentiment vs psychology), and which
unlearning step size the preset takes.

The rule, written before the run: the preset's `unlearning.unlearn_lr` (shared by every lwf method)
is the largest candidate at which lwf_oracle, handed the conflicting self-knowledge, (a) takes at
least 90% of its scheduled unlearning steps in every seed and (b) keeps its mean general-text
perplexity within +5% of vanilla's; if no candidate qualifies, the smallest. Candidates: 0.01 (the
powered preset's, chosen on its own validation split) and 0.03 (`lwf_oracle_large`). How far each
raises the conflicting self-knowledge's NLL above vanilla's is reported beside it, not ranked on.

    python experiments/positive_control/conflict_validation.py --project /tmp/conflict_val \
        --log docs/results/positive_control/conflict_validation.md.log
    python experiments/positive_control/conflict_validation.py --write-params /tmp/fresh/params.yaml --seeds 0
                                          # the preset itself on validation, seed 0: its time per stage
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import ROOT, interval, log_to, machine, project_copy, sh, side, table  # noqa: E402
from pipeline.config import read_params  # noqa: E402
from pipeline.presets import params_text, write_atomic  # noqa: E402

PRESET = "smollm2_cpu_conflict"
CANDIDATES = {"lwf_oracle": 0.01, "lwf_oracle_large": 0.03}
METHODS = ["base", "vanilla", "lwf", "lwf_oracle", "lwf_oracle_large", "forget_then_learn"]


def validation_params(seeds: list[int], preset_methods: bool = False) -> dict:
    """The preset with SST-5's validation split in place of its test split (learning and sentiment
    rows), the study's seeds and methods, and the larger candidate step as one more method
    (`preset_methods`: the preset's own methods instead, e.g. to time the preset on validation)."""
    raw = read_params(ROOT / "presets" / f"{PRESET}.yaml")
    raw["data"]["learn"]["options"]["test_split"] = "validation"
    raw["data"]["learn"]["n_test"] = 300  # all of SST-5's validation rows
    sentiment = next(t for t in raw["data"]["forget"] if t["options"].get("name") == "sentiment")
    sentiment["options"]["test_split"] = "validation"
    if preset_methods:
        raw["run"]["seeds"] = seeds
        return raw
    raw["run"] = {"seeds": seeds, "methods": METHODS}
    raw["methods"]["lwf_oracle_large"] = {**raw["methods"]["lwf_oracle"], "unlearn_lr": CANDIDATES["lwf_oracle_large"]}
    return raw


def pick_step(summary: dict) -> tuple[float, dict[float, bool]]:
    """The rule of the docstring on the report's summary: (the pick, whether each candidate qualifies)."""
    ok = {}
    for m, lr in CANDIDATES.items():
        r = summary[m]
        full = all(t >= 0.9 * s for t, s in zip(r["unlearn_steps_taken"], r["unlearn_steps_scheduled"]))
        ok[lr] = full and r["perplexity"] / summary["vanilla"]["perplexity"] - 1 <= 0.05
    return max([lr for lr, q in ok.items() if q], default=min(CANDIDATES.values())), ok


def per_seed(proj: Path, method: str, get) -> list:
    """`get(one seed's result)` for every seed of one method's evaluation (artifacts/eval), in seed order."""
    ev = json.loads((proj / "artifacts/eval" / f"{method}.json").read_text())
    return [get(ev["seeds"][s]) for s in sorted(ev["seeds"], key=int)]


def per_seed_nll(proj: Path, method: str, key: str) -> list[float]:
    return per_seed(proj, method, lambda seed: seed["nll"][key])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", help="the project copy to run in (made on first use)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log")
    ap.add_argument("--write-params", metavar="FILE", help="only write the validation params with the preset's own "
                    "methods and --seeds to FILE (a project's params.yaml, e.g. to time the preset), run nothing")
    a = ap.parse_args(argv)
    if a.write_params:
        write_atomic(Path(a.write_params), params_text(PRESET, validation_params(a.seeds, preset_methods=True))[1])
        return
    if not a.project:
        ap.error("--project is required (or --write-params)")
    proj = Path(a.project)
    project_copy(proj, a.threads)
    raw = validation_params(a.seeds)
    unlearn_lr = raw.get("unlearning", {}).get("unlearn_lr")
    if unlearn_lr != CANDIDATES["lwf_oracle"]:
        raise SystemExit(f"the preset's unlearning.unlearn_lr is {unlearn_lr}, not the candidate {CANDIDATES['lwf_oracle']}")
    _, text = params_text(PRESET, raw)
    write_atomic(proj / "params.yaml", text)
    t0 = time.time()
    sh([sys.executable, "-m", "dvc", "repro", "-q"], proj, a.threads)
    wall = time.time() - t0
    summary = json.loads((proj / "metrics/summary.json").read_text())
    conf = json.loads((proj / "metrics/confidence.json").read_text())

    with log_to(a.log):
        print(f"## {PRESET} on SST-5 validation (300 rows), seeds {a.seeds}: dvc repro {wall:.0f} s ({machine()}, "
              "dvc repro)\n")
        v = summary["vanilla"]
        rows = []
        for m in ["base", "vanilla", "control", *METHODS[2:]]:
            r = summary[m]
            d = "-" if m == "vanilla" else interval(r["learn_score_delta"], *r["learn_score_delta_ci95"]) + \
                f" ({side(*r['learn_score_delta_ci95'])})"
            ppl = r["perplexity"] / v["perplexity"] - 1
            sent = np.mean(per_seed_nll(proj, m, "self/sentiment"))
            steps = f"{sum(r['unlearn_steps_taken'])}/{sum(r['unlearn_steps_scheduled'])}" \
                if r.get("unlearn_steps_scheduled") and sum(r["unlearn_steps_scheduled"]) else "-"
            rows.append([m, f"{r['learn_score']:.3f} ± {r['learn_score_std']:.3f}", d,
                         f"{r['forget_scores']['sentiment']:.3f}", f"{r['forget_scores']['psychol']:.3f}",
                         f"{sent:.3f}", f"{r['perplexity']:.2f} ({ppl:+.1%})", steps])
        table(f"Per method, mean ± sd over {len(a.seeds)} seeds (Δ: paired with vanilla over seeds and rows; "
                    "control's learn score is on the nonce words)",
                    ["method", "learn acc", "Δ learn vs vanilla [95% CI]", "sentiment acc", "psychol acc",
                     "self/sentiment NLL", "perplexity (vs vanilla)", "unlearning steps taken"], rows)
        c = summary["control"]
        print(f"\nNegative transfer (control - vanilla, learn accuracy): "
              f"{interval(c['learn_score_delta'], *c['learn_score_delta_ci95'])}: "
              f"{'above 0' if side(*c['learn_score_delta_ci95']) == '+' else 'not above 0'}\n")
        table(f"AUROC of each confidence score, sentiment vs psychology self-knowledge ({conf['n_samples']} samples; "
                    f"default score {conf['score']})", ["score", "AUROC"],
                    [[k, f"{x:.3f}"] for k, x in sorted(conf["auroc"].items(), key=lambda kv: -kv[1])])
        print(f"\nShare of sentiment samples in D_U by selection: "
              f"{', '.join(f'{k} {x:.2f}' for k, x in conf['positive_share_of_selection'].items())}\n")
        pick, ok = pick_step(summary)
        for m, lr in CANDIDATES.items():
            r = summary[m]
            ppl = r["perplexity"] / v["perplexity"] - 1
            rise = np.mean(per_seed_nll(proj, m, "self/sentiment")) - np.mean(per_seed_nll(proj, "vanilla", "self/sentiment"))
            print(f"- unlearn_lr {lr} ({m}): steps {r['unlearn_steps_taken']} of {r['unlearn_steps_scheduled']}, "
                  f"perplexity {ppl:+.1%} vs vanilla, conflicting self-knowledge NLL {rise:+.3f} vs vanilla: "
                  f"{'qualifies' if ok[lr] else 'does not qualify'}")
        print(f"\nThe rule's pick for the preset's unlearning.unlearn_lr: {pick}")


if __name__ == "__main__":
    main()
