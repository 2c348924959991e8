"""pipeline.optimum: the plain fine-tune is the learning side of pipeline.train.finetune, bit for bit."""
import copy

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
