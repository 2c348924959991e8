"""LWF inside Hugging Face Trainer (pipeline/hf_trainer.py): unlearning steps happen exactly on
schedule (also under gradient accumulation), each one moves the weights as the pipeline's own
unlearning step does on the same batch, a run resumed from a Trainer checkpoint ends where the
uninterrupted run ends, and the worked example (docs/examples/trainer_lwf.py) runs in 1 and in 2
processes (accelerate launch)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.data import collate, encode_rows
from pipeline.train import Finetune

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs/examples/trainer_lwf.py"


def _d_u():
    from pipeline.tasks.lab import count_row, neutral_row

    return [neutral_row(a, b) for a, b in ((12, 3), (45, 7), (60, 2), (31, 9))] + \
           [count_row(n) for n in (417, 238, 555, 901)]


def _trainer(model, tok, rows, out, method, **args):
    from transformers import TrainingArguments

    from pipeline.hf_trainer import LWFTrainer

    kw = {**dict(max_steps=8, per_device_train_batch_size=4, learning_rate=3e-4, report_to=[], save_strategy="no",
                 remove_unused_columns=False, seed=0, use_cpu=True, max_grad_norm=1.0), **args}
    return LWFTrainer(model=model, args=TrainingArguments(str(out), **kw), train_dataset=encode_rows(tok, rows, 48),
                      data_collator=lambda b: collate(b, tok.pad_token_id), unlearn_rows=_d_u(), method=method,
                      unlearn_tokenizer=tok, max_length=48, guard_rows=rows[:8])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_unlearning_steps_happen_exactly_on_schedule(tiny, rows, tmp_path, accumulation):
    method = MethodConfig(unlearn="periodic", objective="npo", unlearn_every=3, unlearn_batch_size=4, unlearn_lr=0.01)
    trainer = _trainer(copy.deepcopy(tiny[0]), tiny[1], rows, tmp_path, method, max_steps=10,
                       gradient_accumulation_steps=accumulation)
    trainer.train()
    stats = trainer.lwf_stats()
    assert stats["unlearn_steps_at"] == [3, 6, 9] and trainer.state.global_step == 10
    assert stats["guard"]["checks"] == 3 and stats["guard"]["stopped_at"] is None


@pytest.mark.parametrize("objective", ["ga", "npo"])
def test_a_trainer_unlearning_step_is_the_pipelines_step_on_the_same_batch(tiny, rows, tmp_path, objective):
    model, tok = tiny
    method = MethodConfig(unlearn="periodic", objective=objective, unlearn_every=2, unlearn_batch_size=4,
                          unlearn_lr=0.05, guard="none")
    ours = copy.deepcopy(model)
    run = Finetune(ours, tok, rows, _d_u(), FinetuneConfig(max_steps=4, batch_size=4, grad_clip=1.0), method, 0, 48)
    run.unlearning_step()
    theirs = copy.deepcopy(model)
    trainer = _trainer(theirs, tok, rows, tmp_path, method)
    assert trainer.unlearning_step(2)
    moved = 0.0
    for a, b, c in zip(ours.parameters(), theirs.parameters(), model.parameters()):
        torch.testing.assert_close(b - c, a - c, rtol=1e-4, atol=1e-7)
        moved = max(moved, (a - c).abs().max().item())
    assert moved > 1e-4


def test_resumed_from_a_trainer_checkpoint_the_run_ends_where_the_whole_run_ends(tiny, rows, tmp_path):
    model, tok = tiny
    method = MethodConfig(unlearn="periodic", objective="npo", unlearn_every=2, unlearn_batch_size=4,
                          unlearn_lr=0.01, unlearn_optimizer="adam", guard="none")  # resume, not the guard
    whole = copy.deepcopy(model)
    t = _trainer(whole, tok, rows, tmp_path / "a", method, save_strategy="steps", save_steps=4)
    t.train()
    assert (tmp_path / "a/checkpoint-4/lwf_state.pt").exists()
    resumed = copy.deepcopy(model)
    r = _trainer(resumed, tok, rows, tmp_path / "a", method, save_strategy="no")
    r.train(resume_from_checkpoint=str(tmp_path / "a/checkpoint-4"))
    assert r.lwf_stats() == t.lwf_stats() and t.lwf_stats()["unlearn_steps_at"] == [2, 4, 6, 8]
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_trainer_refuses_what_it_cannot_do(tiny, rows, tmp_path):
    for bad, msg in ((dict(unlearn_optimizer="joint"), "offers separate and adam"), (dict(unlearn="early"), "periodic")):
        with pytest.raises(ValueError, match=msg):
            _trainer(copy.deepcopy(tiny[0]), tiny[1], rows, tmp_path, MethodConfig(**{"unlearn": "periodic", **bad}))


@pytest.fixture(scope="module")
def example_inputs(tiny, rows, tmp_path_factory):
    """What the pipeline would have made: a saved base model, the learning rows, a confidence table."""
    import pandas as pd
    from datasets import Dataset, DatasetDict

    d = tmp_path_factory.mktemp("example")
    tiny[0].save_pretrained(d / "model")
    tiny[1].save_pretrained(d / "model")
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(d / "learn"))  # as prepare writes data/learn
    du = _d_u()
    pd.DataFrame({"prompt": [r["prompt"] for r in du], "response": [r["target"] for r in du],
                  "truncated": False, "selected": [True] * 6 + [False] * 2}).to_parquet(d / "confidence.parquet")
    return d


def test_the_docs_excerpt_is_the_example_as_it_runs():
    """docs/trainer.md quotes the example's Trainer lines; they must be the lines the e2e tests run."""
    import re

    doc = (ROOT / "docs/trainer.md").read_text()
    block = re.search(r"```python\n(trainer = LWFTrainer\(.*?)```", doc, re.S).group(1)
    example = EXAMPLE.read_text()
    for line in block.splitlines():
        code = line.split("   #")[0].rstrip()
        assert code.startswith("print(trainer.lwf_stats())") or code in example, line


def _launch(example_inputs, out, *launch_args):
    """`accelerate launch <launch_args> docs/examples/trainer_lwf.py ...` run by this interpreter."""
    d = example_inputs
    args = [str(EXAMPLE), "--model", str(d / "model"), "--confidence", str(d / "confidence.parquet"),
            "--learn", str(d / "learn"), "--out", str(out), "--steps", "8", "--max-length", "48"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--mixed_precision", "no",
           "--dynamo_backend", "no", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _stats(proc) -> dict:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2])
def test_the_worked_example_runs_in_one_and_two_processes(example_inputs, processes, tmp_path):
    """Several CPU processes: Accelerate's torchrun launcher (`--multi_gpu`; `--cpu` would start one)."""
    launch = ["--num_processes", "1"] if processes == 1 else ["--multi_gpu", "--num_processes", "2"]
    stats = _stats(_launch(example_inputs, tmp_path / "out", *launch))
    assert stats["unlearn_steps_at"] == [4, 8] and stats["objective"] == "npo"
    assert (tmp_path / "out/model.safetensors").exists()


@pytest.mark.e2e
def test_the_worked_example_runs_on_two_machines(example_inputs, tmp_path):
    """Accelerate's multi-node launch, two 'machines' of one process each on this host (machine ranks 0
    and 1, rendezvous at 127.0.0.1): what two real nodes run, with their own IP."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    common = ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
              "--main_process_port", port]
    procs = [_launch(example_inputs, tmp_path / "out", *common, "--machine_rank", str(r)) for r in (0, 1)]
    stats = _stats(procs[0])
    procs[1].communicate(timeout=900)
    assert procs[1].returncode == 0
    assert stats["unlearn_steps_at"] == [4, 8]
