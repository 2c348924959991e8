"""Resumable fine-tuning runs: one checkpoint file per run, valid only for the run it was made by.

A checkpoint holds the model, both optimizers' states, the LR scheduler, the RNG states and the
run's position (`RunState`: the event, both stream counters, the guard's record), so a killed run
resumes to the same final weights, bit for bit. It is used only when its fingerprint matches every
setting of the run plus digests of the learning rows, the D_U rows and the starting weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from . import dist

log = logging.getLogger("lwf")


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_digest() -> str:
    """Digest of the library's source (pipeline/, its tasks and the stages): a kept result made by
    other code is not reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted([*root.rglob("*.py"), *(root.parent / "stages").glob("*.py")]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def rows_digest(rows: list[dict]) -> str:
    """Content digest of training rows (a changed D_U of the same size changes it)."""
    return fingerprint(rows)


def weights_digest(model) -> str:
    """Digest of a model's parameters and buffers, byte for byte (under FSDP a collective)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = dist.full_tensor(t).detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


class Checkpoint:
    """The resumable state of one `pipeline.train.Finetune` run in one file: valid only for the run
    with the same fingerprint (every setting, the content of the learning rows, D_U and the guard
    rows, the starting weights' bytes, the checkpoint format (fsdp shards or a replica) and the
    mixed precision)."""

    def __init__(self, path: str | Path, run, resume: bool = True):
        self.path, self.resume = Path(path), resume
        self.fingerprint = fingerprint(run.run_id, run.seed, run.cfg.model_dump(), run.method.model_dump(),
                                       rows_digest(run.learn_rows), rows_digest(run.unlearn_rows),
                                       rows_digest(run.guard.rows), weights_digest(run.model),
                                       "fsdp" if run.fsdp else "replica", run.mixed_precision)

    def restore(self, run) -> bool:
        if not (self.resume and self.path.exists()):
            return False
        saved = torch.load(self.path, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != self.fingerprint:
            log.info("stage finetune: ignoring checkpoint %s (made with other settings, data or base model)", self.path)
            return False
        dist.load_full_state(run.model, run.optimizer, saved["model"], saved["optimizer"])
        if saved.get("unlearn_optimizer") is not None:  # (the model's state again: the call sets both)
            dist.load_full_state(run.model, run.unlearn_optimizer, saved["model"], saved["unlearn_optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.state = type(run.state)(**saved["state"])
        run.guard.load_state(saved["guard"])
        set_rng_state(saved["rng"])
        log.info("stage finetune: resumed %s from event %d/%d", run.run_id, run.state.event, len(run.schedule))
        return True

    def save(self, run) -> None:
        from .io import atomic_path

        model_state, optimizer_state = dist.full_state(run.model, run.optimizer)  # a collective under FSDP
        unlearning = run.unlearn_optimizer  # plain SGD keeps no state: nothing to save (and FSDP's loader refuses none)
        unlearn_state = dist.full_state(run.model, unlearning)[1] if unlearning is not None and unlearning.state else None
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "model": model_state, "optimizer": optimizer_state,
                        "unlearn_optimizer": unlearn_state, "scheduler": run.scheduler.state_dict(),
                        "state": run.state.__dict__, "guard": run.guard.state(), "rng": rng_state()}, tmp)

    def remove(self) -> None:
        if dist.is_main():
            self.path.unlink(missing_ok=True)


def linked_copy(src: Path, dst: Path) -> None:
    """`src` (a file or a directory) at `dst` by hard links where the file system allows, else copies."""
    import os
    import shutil

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        link(src, dst)


class Finished:
    """One seed's finished outputs of a multi-seed stage, kept (hard links) outside DVC's outputs until
    the whole stage is done. DVC deletes a stage's outputs before it runs it again, so without this a
    `finetune@<method>` stopped during seed 3 (Ctrl-C, a crash) would train seeds 0-2 again. Valid only
    for the run with the same fingerprint (`Checkpoint.fingerprint`: settings, rows, starting weights)."""

    def __init__(self, path: str | Path, fingerprint: str, outputs: dict[str, Path]):
        self.path, self.fingerprint, self.outputs = Path(path), fingerprint, outputs  # name -> output path

    def restore(self) -> bool:
        """Put the kept outputs back in place; True when they were there and made by the same run
        (decided by rank 0 for every process)."""
        import shutil

        ok = dist.is_main() and (self.path / "fingerprint").exists() \
            and (self.path / "fingerprint").read_text() == self.fingerprint \
            and all((self.path / name).exists() for name in self.outputs)
        if dist.active():
            decision = [ok]
            torch.distributed.broadcast_object_list(decision, src=0)
            ok = decision[0]
        if ok and dist.is_main():
            for name, out in self.outputs.items():
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
                linked_copy(self.path / name, out)
        return ok

    def keep(self) -> None:
        """Link the outputs, just written, under `path` with the fingerprint (rank 0)."""
        import shutil

        if not dist.is_main():
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for name, out in self.outputs.items():
            linked_copy(out, self.path / name)
        (self.path / "fingerprint").write_text(self.fingerprint)
