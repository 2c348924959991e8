"""One report over the seeds of two finished projects of the same params that differ only in
`run.seeds`: what one `dvc repro` of the union of the seeds would report, when the 2 cores of one
working session cannot run them all in one go.

Each fine-tune and each evaluation is one seed's own work (the finetune and evaluate stages loop
over `run.seeds`, one model per seed, and write one entry per seed), and every stage that does not
depend on the seeds (prepare ... prefix_eval) is the same in both projects: the second project is
a copy of the first with other seeds (with the DVC cache, `dvc repro` reruns only the per-seed
stages; without it, every stage). This script checks that the two params.yaml are equal but for
`run.seeds`, that the seeds are disjoint and that the seed-free stages' outputs are byte-identical
(dvc.lock; a metrics JSON may differ only in the stage's own `seconds`), then copies the second
project's per-seed entries (artifacts/eval/<method>.json, logs/train/<method>/seed<k>.csv) into the
first, writes the union of the seeds into its params.yaml and runs the report stage's own code
there (`python -m stages.report`: the paired bootstrap over all seeds and rows). The first
project's `dvc status` then says the per-seed stages changed: it is a merge, not a `dvc repro`, and
the docs say so.

    python experiments/positive_control/merge_seeds.py --into /tmp/fresh --from /tmp/fresh_b
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: pipeline
from pipeline.io import write_json  # noqa: E402
from pipeline.presets import write_atomic  # noqa: E402

PER_SEED = ("finetune", "evaluate", "finetune_control", "evaluate_control", "lm_eval", "report")


def shared_outputs(lock: dict) -> dict[str, str]:
    """path -> md5 of every output of the stages that do not depend on the seeds (dvc.lock)."""
    out = {}
    for name, stage in lock["stages"].items():
        if name.split("@")[0] in PER_SEED:
            continue
        for o in stage.get("outs", []):
            out[o["path"]] = o.get("md5")
    return out


def check(a: Path, b: Path) -> tuple[dict, list[int], list[int]]:
    """(params of `a`, seeds of a, seeds of b); ValueError naming what differs."""
    pa, pb = (yaml.safe_load((p / "params.yaml").read_text()) for p in (a, b))
    sa, sb = pa["run"]["seeds"], pb["run"]["seeds"]
    if set(sa) & set(sb):
        raise ValueError(f"run.seeds overlap: {sorted(set(sa) & set(sb))}")
    if {**pa, "run": {**pa["run"], "seeds": None}} != {**pb, "run": {**pb["run"], "seeds": None}}:
        raise ValueError("the two params.yaml differ in more than run.seeds")
    la, lb = (shared_outputs(yaml.safe_load((p / "dvc.lock").read_text())) for p in (a, b))
    diff = sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k)
                  and not (k.startswith("metrics/") and k in la and k in lb and untimed(a / k) == untimed(b / k)))
    if diff:
        raise ValueError(f"the shared stages' outputs differ: {', '.join(diff)}")
    return pa, sa, sb


def untimed(path: Path):
    """A stage's metrics JSON without its own wall times (`seconds`): what must be equal between runs."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "seconds"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(json.loads(path.read_text()))


def merge(a: Path, b: Path) -> list[int]:
    """Copy b's per-seed entries into a and set a's run.seeds to the union; returns that union."""
    params, sa, sb = check(a, b)
    methods = list(params["run"]["methods"]) + (["control"] if (a / "artifacts/eval/control.json").exists() else [])
    for m in methods:
        ea, eb = (json.loads((p / "artifacts/eval" / f"{m}.json").read_text()) for p in (a, b))
        if "seeds" not in ea:  # a skipped control
            continue
        ea["seeds"].update(eb["seeds"])
        write_json(a / "artifacts/eval" / f"{m}.json", ea)
        for s in sb:
            shutil.copy2(b / "logs/train" / m / f"seed{s}.csv", a / "logs/train" / m / f"seed{s}.csv")
    seeds = sorted(sa + sb)
    text = (a / "params.yaml").read_text()
    new = re.sub(r"(\n  seeds:\s*)\[[0-9, ]*\]", lambda mt: f"{mt.group(1)}{seeds}", text, count=1)
    if new == text:
        raise ValueError("run.seeds not found in params.yaml")
    write_atomic(a / "params.yaml", new)
    return seeds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--into", required=True, type=Path, help="the first project: gets the merged report")
    ap.add_argument("--from", dest="src", required=True, type=Path, help="the second project: its seeds are added")
    ap.add_argument("--python", default=sys.executable, help="the interpreter of the first project's environment")
    a = ap.parse_args(argv)
    seeds = merge(a.into, a.src)
    print(f"run.seeds of {a.into}: {seeds}; running the report stage there")
    subprocess.run([a.python, "-m", "stages.report"], cwd=a.into, check=True)


if __name__ == "__main__":
    main()
