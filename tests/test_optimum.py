"""pipeline.optimum: the plain fine-tune is the learning side of pipeline.train.finetune, bit for bit."""
import copy

import numpy as np
import pytest
import torch

from pipeline.optimum import plain_finetune


@pytest.mark.parametrize("steps,lr,batch_size,warmup,seed", [(6, 1e-2, 4, 3, 5), (5, 3e-3, 5, 0, 0)])
def test_plain_finetune_gives_the_weights_of_finetune(tiny, rows, steps, lr, batch_size, warmup, seed):
    """Same settings -> bit-identical weights as `finetune(..., [], cfg, MethodConfig(), seed)` (a
    learning-only run: warmup then constant LR, clip, seeded batches); batch 5 of 12 rows wraps an epoch."""
    from pipeline.config import FinetuneConfig, MethodConfig
    from pipeline.train import finetune

    model, tok = tiny
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cfg = FinetuneConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, lr_schedule="constant")
    finetune(a, tok, rows, [], cfg, MethodConfig(), seed, 48)
    stats = plain_finetune(b, tok, rows, steps, lr, batch_size, seed, 48, warmup_steps=warmup)
    assert stats["steps"] == steps and stats["skipped_nonfinite"] == 0
    moved = False
    for (n, pa), (_, pb), (_, p0) in zip(a.named_parameters(), b.named_parameters(), model.named_parameters()):
        assert torch.equal(pa, pb), n
        moved |= not torch.equal(pa, p0)
    assert moved and not a.training and not b.training


def test_plain_finetune_differs_with_another_seed_or_warmup(tiny, rows):
    """The comparison above can fail: another seed (other batches) or no warmup gives other weights."""
    model, tok = tiny
    ref, other_seed, no_warmup = (copy.deepcopy(model) for _ in range(3))
    plain_finetune(ref, tok, rows, 4, 1e-2, 4, 5, 48, warmup_steps=2)
    plain_finetune(other_seed, tok, rows, 4, 1e-2, 4, 6, 48, warmup_steps=2)
    plain_finetune(no_warmup, tok, rows, 4, 1e-2, 4, 5, 48, warmup_steps=0)
    w = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert not torch.equal(w(ref), w(other_seed)) and not torch.equal(w(ref), w(no_warmup))


def test_library_module_does_not_import_the_training_loop():
    import ast
    from pathlib import Path

    for mod in ("optimum.py", "confidence.py"):
        tree = ast.parse((Path(__file__).resolve().parents[1] / "pipeline" / mod).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(x == "train" or x.endswith(".train") for x in names), (mod, names)


def test_confidence_side_stages_do_not_depend_on_the_fine_tuning_loop():
    """dvc.yaml: a change of pipeline/train.py or of any `finetune` output reruns none of optimum,
    fisher, confidence (their deps name neither)."""
    from pathlib import Path

    import yaml

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    for name in ("optimum", "fisher", "confidence"):
        deps = stages[name]["deps"]
        assert "pipeline/train.py" not in deps and not any(d.startswith("artifacts/models") for d in deps), name
        assert not any(p == "finetune" or p.startswith("finetune.") for p in stages[name]["params"]), name
    assert "artifacts/optimum.safetensors" in stages["confidence"]["deps"]
    assert "artifacts/optimum.safetensors" in stages["optimum"]["outs"]


# ---------------------------------------------------------------- early stopping on the validation split
def _val_curve(model, tok, learn, val, steps, lr, batch_size, seed, warmup):
    """Reference: the validation NLL after every step of ONE plain fine-tune (step 0 = before)."""
    from pipeline.data import encode_rows, sequence_nlls

    encs = encode_rows(tok, val, 48)
    m = copy.deepcopy(model)
    curve = [float(sequence_nlls(m, encs, tok.pad_token_id).mean())]

    def cb(_k, _loss):
        curve.append(float(sequence_nlls(m, encs, tok.pad_token_id).mean()))
        m.train()

    m.train()
    plain_finetune(m, tok, learn, steps, lr, batch_size, seed, 48, warmup_steps=warmup, on_step=cb)
    return curve


@pytest.fixture(scope="module")
def overfit(tiny):
    """A learning set and a 'validation' set whose NLL along the fine-tune has its minimum inside the
    run: validation = the conflicting rule's answers to the same prompt form (lab_conflict), which a
    fine-tune on lab_learn first helps (the format, the city tokens) and then hurts (a large LR on a
    randomly initialised model: the minimum is at step 4 of 12)."""
    from pipeline.tasks import get_task

    model, tok = tiny
    learn = get_task("lab_learn").load("train", 8, 0, {})
    val = get_task("lab_conflict").load("train", 8, 1, {})
    settings = dict(steps=12, lr=5e-2, batch_size=4, seed=0, warmup=1)
    curve = _val_curve(model, tok, learn, val, **settings)
    return model, tok, learn, val, settings, curve


def test_early_stopping_keeps_the_weights_of_the_validation_minimum(overfit):
    """eval_every 1, patience beyond the run: the kept step is the argmin of the reference curve (an
    interior one: the test could tell 'last' from 'best'), the weights are those of a plain run of
    exactly that many steps, bit for bit, and the recorded curve is the reference's."""
    from pipeline.config import OptimumConfig
    from pipeline.optimum import early_stopped_finetune

    model, tok, learn, val, s, curve = overfit
    best = int(np.argmin(curve))
    assert 0 < best < s["steps"] - 2, curve  # an interior minimum
    o = OptimumConfig(steps=s["steps"], lr=s["lr"], batch_size=s["batch_size"], seed=s["seed"],
                      warmup_steps=s["warmup"], n_validation=len(val), eval_every=1, patience=1000)
    m = copy.deepcopy(model)
    stats = early_stopped_finetune(m, tok, learn, val, o, 48, True)
    assert stats["best_step"] == best and not stats["stopped_early"] and stats["steps_run"] == s["steps"]
    assert stats["val_nll_best"] == pytest.approx(curve[best], rel=1e-9)
    assert [stats["val_curve"][str(k)] for k in range(s["steps"] + 1)] == pytest.approx(curve, rel=1e-5)
    ref = copy.deepcopy(model)
    plain_finetune(ref, tok, learn, best, s["lr"], s["batch_size"], s["seed"], 48, warmup_steps=s["warmup"])
    for (n, a), (_, b) in zip(m.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    assert not m.training


def test_early_stopping_stops_after_patience_reads_without_a_new_lowest(overfit):
    """eval_every 2, patience 2: the run ends 2 reads (4 steps) after the lowest read, keeping it."""
    from pipeline.config import OptimumConfig
    from pipeline.optimum import early_stopped_finetune

    model, tok, learn, val, s, curve = overfit
    reads = list(range(0, s["steps"] + 1, 2))
    best = reads[int(np.argmin([curve[k] for k in reads]))]
    assert best + 4 < s["steps"]
    o = OptimumConfig(steps=s["steps"], lr=s["lr"], batch_size=s["batch_size"], seed=s["seed"],
                      warmup_steps=s["warmup"], n_validation=len(val), eval_every=2, patience=2)
    stats = early_stopped_finetune(copy.deepcopy(model), tok, learn, val, o, 48, True)
    assert stats["best_step"] == best and stats["stopped_early"] and stats["steps_run"] == best + 4
    assert sorted(int(k) for k in stats["val_curve"]) == [k for k in reads if k <= best + 4]


def test_optimum_delta_without_validation_runs_the_fixed_budget(tiny, rows):
    """n_validation 0 (no validation rows): exactly `steps` steps, as before (best_step = steps)."""
    from pipeline.config import OptimumConfig
    from pipeline.optimum import optimum_delta

    model, tok = tiny
    o = OptimumConfig(steps=3, lr=1e-2, batch_size=4, warmup_steps=1, seed=3)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    _, _, stats = optimum_delta(a, tok, rows, o, 48, True, [n for n, _ in model.named_parameters()])
    plain_finetune(b, tok, rows, 3, 1e-2, 4, 3, 48, warmup_steps=1)
    assert stats["best_step"] == 3
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
