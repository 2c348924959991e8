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

from .data import prompt_ids
from .tasks.base import cut_at


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int = 12, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0, num_return_sequences: int = 1,
             seed: int = 0, add_bos: bool = True, progress: bool = True, stop: tuple[str, ...] = ()) -> list[dict]:
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
    bar = tqdm(total=len(ids), desc="generate", mininterval=2, leave=False, disable=not progress or not dist.is_main())
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
        out = model.generate(
            input_ids=inp.to(device), attention_mask=att.to(device), max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature if do_sample else None, top_k=0 if do_sample else None,
            top_p=None, num_return_sequences=num_return_sequences, eos_token_id=eos, pad_token_id=pad,
            use_cache=True, output_logits=True, return_dict_in_generate=True,
            synced_gpus=dist.is_fsdp(model),  # FSDP: every rank steps until all ranks are done
        )
        new = out.sequences[:, n:].cpu()
        logp = torch.stack(out.logits, 1).float().log_softmax(-1).cpu()  # (B*k, steps, V)
        tok_lp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
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


def _through_stop(tok, body: list[int], stop) -> int:
    """How many tokens of `body` it takes for the decoded text to contain one of the `stop` strings."""
    def has_stop(k):
        text = tok.decode(body[:k], skip_special_tokens=True)
        return cut_at(text, stop) != text

    return bisect_left(range(len(body) + 1), True, key=has_stop)
