"""Writes tests/fixtures/ga_reference.json: the weights (per-parameter float64 sum, sum of squares and
first values) of short fine-tunes with gradient-ascent unlearning in every unlearning mode, on the
tests' tiny model. Made once with the loop from before the objectives rebuild (commit 1f48a2c), so
tests/test_objectives.py can check that objective `ga` reproduces the old results. Run from the
repository root: `python tests/make_ga_reference.py` (it overwrites the fixture: only do that on
purpose, when a change of results is intended and explained)."""
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {  # name -> (unlearning mode, schedule)
    "separate_periodic": ("separate", "periodic"),
    "separate_early": ("separate", "early"),
    "joint_periodic": ("joint", "periodic"),
    "shared_periodic": ("shared", "periodic"),
}
RECIPE = dict(max_steps=12, batch_size=4, lr=3e-4, warmup_steps=2, grad_clip=1.0, log_every=1)
UNLEARN = dict(unlearn_every=3, unlearn_batch_size=4, alpha=0.1, unlearn_lr=0.1)


def d_u():
    from pipeline.tasks.lab import count_row, neutral_row

    return [neutral_row(a, b) for a, b in ((12, 3), (45, 7), (60, 2), (31, 9))] + \
           [count_row(n) for n in (417, 238, 555, 901)]


def run_case(mode: str, schedule: str):
    from conftest import tiny_lab
    from pipeline.config import FinetuneConfig, MethodConfig
    from pipeline.tasks import get_task
    from pipeline.train import finetune

    torch.manual_seed(0)
    model, tok = tiny_lab()
    model = copy.deepcopy(model)
    rows = get_task("lab_learn").load("train", 12, 0, {})
    if "unlearn_lr" in FinetuneConfig.model_fields:  # the loop before the rebuild: global unlearning settings
        cfg = FinetuneConfig(**RECIPE, **UNLEARN, unlearn_optimizer=mode)
        method = MethodConfig(unlearn=schedule)
    else:
        cfg = FinetuneConfig(**RECIPE)
        method = MethodConfig(unlearn=schedule, objective="ga", unlearn_optimizer=mode, **UNLEARN)
    log, stats = finetune(model, tok, rows, d_u(), cfg, method, 0, 48)
    return model, log


def digest(model) -> dict:
    out = {}
    for name, p in model.state_dict().items():
        v = p.detach().double().flatten()
        out[name] = [v.sum().item(), (v * v).sum().item(), *v[:3].tolist()]
    return out


if __name__ == "__main__":
    ref = {"made_by": "tests/make_ga_reference.py", "cases": {}}
    for name, (mode, schedule) in CASES.items():
        model, log = run_case(mode, schedule)
        ref["cases"][name] = {"weights": digest(model), "unlearn_losses": [r["loss"] for r in log if r["kind"] == "unlearn"]}
    path = Path("tests/fixtures/ga_reference.json")
    path.write_text(json.dumps(ref, indent=1))
    print(f"wrote {path}")
