"""Stage 2: elicit the base model's self-knowledge on the forgetting-task prompts.

For every forgetting task: the base model answers each training prompt (greedy by default, or k
samples), and each answer is kept with its length, mean token log-prob, whether it was cut at
max_new_tokens, and, for tasks with gold answers, whether the task's metric marks it correct
(`only_wrong` keeps only the wrong ones, as the authors' precursor code did).
"""
from __future__ import annotations

import logging

import pandas as pd

from .generation import generate

log = logging.getLogger("lwf")


def elicit_task(model, tok, task, rows: list[dict], e, add_bos: bool = True) -> tuple[pd.DataFrame, dict]:
    """Self-knowledge of one forgetting task (`e`: params `elicit`): a frame with forget_task,
    prompt, response, n_tokens, mean_logprob, truncated, gold, correct; and its statistics."""
    log.info("stage elicit: %s: generating for %d prompts x %d", task.name, len(rows), e.num_return_sequences)
    gens = generate(model, tok, [r["prompt"] for r in rows], e.max_new_tokens, e.batch_size, e.do_sample,
                    e.temperature, e.num_return_sequences, e.seed, add_bos, stop=task.stop)
    each = [r for r in rows for _ in range(e.num_return_sequences)]  # the row of every response
    df = pd.DataFrame(gens)
    df.insert(0, "prompt", [r["prompt"] for r in each])
    df.insert(0, "forget_task", task.name)
    df["gold"] = [r["answer"] for r in each]
    df["correct"] = [task.score(g["response"], r["answer"], r.get("choices")) if task.has_gold else float("nan")
                     for g, r in zip(gens, each)]
    stats = {"prompts": len(rows), "responses": len(df),
             "agreement_with_gold": float(df["correct"].mean()) if task.has_gold else None,
             "empty": int((df["n_tokens"] == 0).sum()), "truncated": int(df["truncated"].sum())}
    if e.only_wrong and task.has_gold:
        df = df[df["correct"] < 1]
        stats["kept_only_wrong"] = len(df)
    return df, stats
