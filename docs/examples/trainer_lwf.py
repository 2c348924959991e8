"""Graceful forgetting inside your own Hugging Face Trainer script: the pipeline made D_U (the
confidence table's selected rows), your script learns your rows and unlearns D_U on LWF's schedule.

    python docs/examples/trainer_lwf.py --model artifacts/base_model --confidence artifacts/confidence.parquet \
        --learn data/learn --out runs/trainer-lwf
    accelerate launch --cpu --num_processes 2 docs/examples/trainer_lwf.py ...   # the same, in 2 processes
"""
import argparse
import json

import pandas as pd
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from pipeline.confidence import unlearn_set
from pipeline.config import MethodConfig
from pipeline.data import collate, encode_rows
from pipeline.hf_trainer import LWFTrainer

p = argparse.ArgumentParser()
for flag in ("--model", "--confidence", "--learn", "--out"):
    p.add_argument(flag, required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--max-length", type=int, default=64)
p.add_argument("--resume", default=None)
a = p.parse_args()

tok, model = AutoTokenizer.from_pretrained(a.model), AutoModelForCausalLM.from_pretrained(a.model)
learn = [dict(r) for r in load_from_disk(a.learn)["train"]]          # rows with `prompt` and `target`
d_u = unlearn_set(pd.read_parquet(a.confidence), "high")               # D_U: the most confident rows
args = TrainingArguments(a.out, max_steps=a.steps, per_device_train_batch_size=8, learning_rate=3e-4,
                         save_steps=max(1, a.steps // 2), report_to=[], remove_unused_columns=False, seed=0)
trainer = LWFTrainer(model=model, args=args, train_dataset=encode_rows(tok, learn, a.max_length),
                     data_collator=lambda batch: collate(batch, tok.pad_token_id),
                     unlearn_rows=d_u, unlearn_tokenizer=tok, max_length=a.max_length, guard_rows=learn[:16],
                     method=MethodConfig(unlearn="periodic", objective="npo", unlearn_every=4, unlearn_lr=0.03))
trainer.train(resume_from_checkpoint=a.resume)
if trainer.is_world_process_zero():
    trainer.save_model(a.out)
    print(json.dumps(trainer.lwf_stats()))
