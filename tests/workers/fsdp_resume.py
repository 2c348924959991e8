"""Run under `accelerate launch --num_processes 2` in a project that `dvc repro` made: the lwf
fine-tune with launch.strategy fsdp, (a) uninterrupted and (b) "crashed" after a checkpoint and
resumed; rank 0 writes the largest absolute weight difference between them, whether their loss
logs are equal, the guard's record and the fraction of the parameters one process held as JSON to
argv[2]."""
import json
import sys
from pathlib import Path

import torch

import pandas as pd

from pipeline import dist, paths
from pipeline.confidence import as_rows
from pipeline.config import SELECTIONS
from pipeline.config import load_config
from pipeline.models import load_model
from pipeline.stage import load_rows
from pipeline.callbacks import StopAfter
from pipeline.train import finetune


def d_u(cfg) -> list[dict]:
    """lwf's D_U with each row's reference NLL, as the finetune stage passes it (NPO needs it)."""
    table = pd.read_parquet(paths.CONFIDENCE)
    sel = table[table[SELECTIONS[cfg.methods["lwf"].selection]]]
    return [dict(r, ref_nll=float(n)) for r, n in zip(as_rows(sel), sel["nll_base"])]


def trained(cfg, ckpt=None, stop=None) -> dict:
    model, tok = load_model(paths.BASE_MODEL, cfg.model, fsdp=True)
    args = (model, tok, load_rows(paths.LEARN_DATA, "train"), d_u(cfg), cfg.finetune,
            cfg.methods["lwf"], 0, cfg.data.max_length, cfg.model.add_bos)
    try:
        log, stats = finetune(*args, ckpt_path=ckpt, run_id="fsdp-resume", callbacks=[StopAfter(stop)] if stop else ())
    except KeyboardInterrupt:
        return {}
    shard = sum(p.to_local().numel() for p in model.parameters()) / sum(p.numel() for p in model.parameters())
    return {"shard_fraction": shard, "state": dist.full_state(model)[0], "log": log, "guard": stats["guard"]}


def main():
    dist.init()
    cfg = load_config(sys.argv[1])
    ckpt = Path(".lwf/checkpoints/fsdp-resume-test.pt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.unlink(missing_ok=True)
    dist.barrier()
    ref = trained(cfg)
    assert trained(cfg, ckpt, stop=5) == {} and ckpt.exists()
    resumed = trained(cfg, ckpt)
    if dist.is_main():
        a, b = ref["state"], resumed["state"]
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        Path(sys.argv[2]).write_text(json.dumps({"max_abs_diff": diff, "n_tensors": len(a),
                                                 "logs_equal": ref["log"] == resumed["log"], "guard": ref["guard"],
                                                 "shard_fraction": ref["shard_fraction"]}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
