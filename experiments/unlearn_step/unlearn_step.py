"""What one unlearning step (objective `ga`) does, per `unlearn_optimizer` mode: 12 learning steps of the
default recipe on the lab's learning task, then one unlearning step on a 16-row D_U batch
(self-knowledge-like rows of lab_neutral and lab_count). Compared with the same run without that
step: the rise of the D_U batch's NLL and the cosine between the weight update and the ascent
direction grad l(D_U). For `joint` the comparison is with the same 12th learning step without the
unlearning term (its update is mostly the learning step, so no cosine is given).

    python experiments/unlearn_step/unlearn_step.py [PROJECT_DIR]

PROJECT_DIR: a checkout where `dvc repro base_model` has run (then its pretrained lab model is
used); otherwise a randomly initialised lab model of the default size.
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import lab_model, lab_rows, machine, table  # noqa: E402

from pipeline.config import FinetuneConfig, MethodConfig, load_config  # noqa: E402
from pipeline.grads import ascent_direction  # noqa: E402
from pipeline.callbacks import StopAfter  # noqa: E402
from pipeline.train import finetune  # noqa: E402

N = 12


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def trained(model, tok, learn, d_u, cfg, method, stop=None):
    m = copy.deepcopy(model)
    try:
        finetune(m, tok, learn, d_u, cfg, method, 0, 64, callbacks=[StopAfter(stop)] if stop else ())
    except KeyboardInterrupt:
        pass
    return m


def main(project: str | None):
    base = Path(project or ".") / "artifacts/base_model"
    if base.exists():
        from pipeline.models import load_model

        model, tok = load_model(str(base), load_config(Path(project or ".") / "params.yaml").model, device="cpu")
        what = f"pretrained lab model ({base})"
    else:
        torch.manual_seed(0)
        model, tok = lab_model()
        what = "randomly initialised lab model (w128)"
    learn = lab_rows("lab_learn", 96)
    d_u = lab_rows("lab_neutral", 8) + lab_rows("lab_count", 8)
    rows = []
    for mode, knob, values in (("separate", "unlearn_lr", (0.03, 0.1, 0.3)), ("joint", "alpha", (0.1, 0.3, 1.0)),
                               ("shared", "alpha", (0.1, 1.0, 10.0))):
        for v in values:
            cfg = FinetuneConfig(max_steps=N, warmup_steps=0)
            lwf = MethodConfig(unlearn="periodic", unlearn_every=N, unlearn_batch_size=16, unlearn_optimizer=mode,
                               guard="none", **{knob: v})  # the step itself: no guard to undo it
            if mode == "joint":
                ref = trained(model, tok, learn, d_u, cfg, MethodConfig())
                done = trained(model, tok, learn, d_u, cfg, lwf)
                cos = "—"
            else:
                ref = trained(model, tok, learn, d_u, cfg, lwf, stop=N)
                done = trained(model, tok, learn, d_u, cfg, lwf)
            before, ascent = ascent_direction(ref, tok, d_u, 64)
            after, _ = ascent_direction(done, tok, d_u, 64)
            if mode != "joint":
                cos = f"{torch.nn.functional.cosine_similarity(flat(done) - flat(ref), ascent, dim=0).item():.3f}"
            rows.append([mode, f"{knob} {v}", f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}", cos])
    table(f"One unlearning step after {N} learning steps (lr 3e-4, clip 1.0) on the {what}; {machine()}",
          ["mode", "setting", "D_U NLL without the step", "with it", "rise", "cos(update, ascent)"], rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
