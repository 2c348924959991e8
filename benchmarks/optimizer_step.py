"""The AdamW step of the fine-tune (`pipeline.dist.adamw`): the fused kernel against PyTorch's
default for CPU tensors (one loop over the tensors), on the parameter shapes of SmolLM2-135M's top
`--blocks` blocks (hidden 576, intermediate 1536, 3 key/value heads of 64: q, k, v, o, gate, up,
down and the two RMSNorm weights per block), random values and gradients, the same in both.

Prints the step time of each (best of `--repeat` runs of 20 steps after a warm-up), the ratio, and
the largest difference of the parameters after 20 steps from the same start (the update is the
same; only the order of floating-point operations differs).

    python benchmarks/optimizer_step.py [--blocks 4] [--threads 2]
"""
import argparse
import time

import torch
from _common import machine, table

from pipeline import dist


def shapes(blocks: int, hidden=576, inter=1536, kv=192):
    one = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden),
           (hidden, inter), (hidden,), (hidden,)]
    return one * blocks


def run(fused: bool, shp, steps: int = 20, repeat: int = 3):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shp]
    grads = [torch.randn(s, generator=g) for s in shp]
    opt = dist.adamw(params, lr=1e-3, weight_decay=0.01) if fused else torch.optim.AdamW(params, lr=1e-3,
                                                                                            weight_decay=0.01)
    assert bool(opt.defaults.get("fused")) == fused
    best = float("inf")
    for r in range(repeat + 1):  # the first round warms up
        t = time.perf_counter()
        for _ in range(steps):
            for p, gr in zip(params, grads):
                p.grad = gr
            opt.step()
        if r:
            best = min(best, (time.perf_counter() - t) / steps)
    return best, params


def compare(blocks: int = 4, repeat: int = 3, hidden=576, inter=1536, kv=192):
    shp = shapes(blocks, hidden, inter, kv)
    n = sum(torch.Size(s).numel() for s in shp)
    t_loop, p_loop = run(False, shp, repeat=repeat)
    t_fused, p_fused = run(True, shp, repeat=repeat)
    diff = max(float((a - b).abs().max()) for a, b in zip(p_loop, p_fused))
    table(f"AdamW step over {len(shp)} tensors ({n / 1e6:.2f}M parameters, the top {blocks} blocks), {machine()}",
          ["optimizer", "step, ms (best of runs of 20)", "speed-up"],
          [["torch.optim.AdamW (default on CPU: for-loop)", f"{1e3 * t_loop:.1f}", "1.00x"],
           ["pipeline.dist.adamw (fused=True)", f"{1e3 * t_fused:.1f}", f"{t_loop / t_fused:.2f}x"]])
    print(f"largest parameter difference after {20 * (repeat + 1)} steps: {diff:.2e}")
    return diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    compare(a.blocks, a.repeat)


if __name__ == "__main__":
    main()
