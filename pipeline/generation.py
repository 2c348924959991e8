"""Batched generation for every stage that generates (elicit, evaluate, the true Fisher).

Batched generation: prompts sorted by length, left-padded, KV cache on, stop at EOS; results come
back in the input order. With `stop` strings (a task's `stop`), a response ends before the first
one: its text is cut there, and its tokens end with the one that completes the stop string. Each
response keeps its length, mean token log-prob and whether it was cut at max_new_tokens (then no
EOS is appended when it is later trained on or unlearned).
"""
from __future__ import annotations

from bisect import bisect_left

import torch
from tqdm import tqdm
from transformers import LogitsProcessorList, TemperatureLogitsWarper

from .data import prompt_ids
from .tasks.base import cut_at


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int = 12, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0, num_return_sequences: int = 1,
             seed: int = 0, add_bos: bool = True, progress: bool = True, stop: tuple[str, ...] = (),
             desc: str = "generate") -> list[dict]:
    """Return one dict per (prompt, sample): response, n_tokens, mean_logprob, truncated; each response
    is cut before the first of the `stop` strings (n_tokens then counts the tokens through it)."""
    from . import dist

    model.eval()
    device = next(model.parameters()).device
    n_all = len(prompts)
    prompts, _ = dist.shard_even(prompts)  # several processes: generate for a shard each, gather in order
    ids = [prompt_ids(tok, p, add_bos) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    results: list[list[dict] | None] = [None] * len(ids)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bar = tqdm(total=len(ids), desc=desc, mininterval=2, leave=False, disable=not progress or not dist.is_main())
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        n = max(len(ids[i]) for i in idx)
        inp = torch.full((len(idx), n), pad, dtype=torch.long)
        att = torch.zeros((len(idx), n), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding
            inp[r, n - len(ids[i]):] = torch.tensor(ids[i], dtype=torch.long)
            att[r, n - len(ids[i]):] = 1
        if do_sample:  # seed per batch from our generator: results do not depend on batch order elsewhere
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        # the temperature is applied after the recorder (so it sees the logits before it); top-k/top-p off
        rec = ChosenLogprobs()
        procs = LogitsProcessorList([rec] + ([TemperatureLogitsWarper(temperature)]
                                             if do_sample and temperature != 1.0 else []))
        out = model.generate(
            input_ids=inp.to(device), attention_mask=att.to(device), max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=1.0 if do_sample else None, top_k=0 if do_sample else None,
            top_p=None, num_return_sequences=num_return_sequences, eos_token_id=eos, pad_token_id=pad,
            use_cache=True, return_dict_in_generate=True, logits_processor=procs,
            synced_gpus=dist.is_fsdp(model),  # FSDP: every rank steps until all ranks are done
        )
        new = out.sequences[:, n:].cpu()
        tok_lp = rec.chosen(new)  # (B*k, steps): log-prob of each generated token
        for r in range(new.shape[0]):
            seq = new[r].tolist()
            end = seq.index(eos) if eos in seq else None
            body = seq[:end] if end is not None else seq
            counted = (end + 1) if end is not None else len(body)  # the EOS's log-prob counts
            text, truncated = tok.decode(body, skip_special_tokens=True), end is None
            if cut_at(text, stop) != text:  # a stop string ends it: the tokens through it, the text before it
                body = body[:_through_stop(tok, body, stop)]
                text, counted, truncated = cut_at(text, stop), len(body), False
            rec = {
                "response": text,
                "n_tokens": len(body),
                "mean_logprob": float(tok_lp[r, :counted].mean()) if counted else 0.0,
                "truncated": truncated,
            }
            i = idx[r // num_return_sequences]
            results[i] = (results[i] or []) + [rec]
        bar.update(len(idx))
    bar.close()
    results = dist.gather_sharded(results, n_all)
    return [rec for recs in results for rec in recs]


class ChosenLogprobs:
    """A logits processor that keeps, step by step, only the log-prob of the token each row goes on
    to choose (log_softmax of the logits it is given), instead of B x steps x V logits: at step t it
    reads the token chosen at t-1 (the last column of input_ids) from the previous step's log-softmax
    and keeps one float per row. `chosen(new_tokens)` adds the last step's and returns (B, steps).
    It is the first processor `generate` applies (custom processors come after the model's own
    defaults, of which sampling here turns all off; the temperature warper is placed after it)."""

    def __init__(self):
        self.prev: torch.Tensor | None = None
        self.kept: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.kept.append(self.prev.gather(-1, input_ids[:, -1:].to(self.prev.device)).squeeze(-1).cpu())
        self.prev = scores.float().log_softmax(-1)
        return scores

    def chosen(self, new: torch.Tensor) -> torch.Tensor:
        steps = list(self.kept)
        if self.prev is not None and len(steps) < new.shape[1]:
            steps.append(self.prev.gather(-1, new[:, len(steps):len(steps) + 1].to(self.prev.device)).squeeze(-1).cpu())
        self.prev = None
        return torch.stack(steps, 1)[:, :new.shape[1]] if steps else torch.zeros(new.shape[0], 0)


def _through_stop(tok, body: list[int], stop) -> int:
    """How many tokens of `body` it takes for the decoded text to contain one of the `stop` strings."""
    def has_stop(k):
        text = tok.decode(body[:k], skip_special_tokens=True)
        return cut_at(text, stop) != text

    return bisect_left(range(len(body) + 1), True, key=has_stop)
