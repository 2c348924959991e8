"""Per-sample gradients: vectorised engine vs the loop, samples/s and ratio, at two model sizes;
results must agree to 1e-5 relative. Target: >= 3x on the embedded model.

    python benchmarks/grads.py [--quick]
"""
from _common import lab_model, lab_rows, machine, parser, table, timeit

from pipeline.data import encode_rows
from pipeline.grads import iter_per_sample_grads


def grads_all(model, encs, pad, engine, chunk):
    import torch

    out, order = {}, []
    for idx, g in iter_per_sample_grads(model, encs, pad, engine, chunk):
        order.append(idx)
        for k, v in g.items():
            out.setdefault(k, []).append(v)
    inv = torch.argsort(torch.cat(order))  # input order (the vectorised engine takes samples by length)
    return {k: [torch.cat(v)[inv]] for k, v in out.items()}


def main(argv=None):
    import torch

    n, chunk = (4, 2) if parser(__doc__).parse_args(argv).quick else (128, 32)

    rows = lab_rows("lab_conflict", n // 2) + lab_rows("lab_neutral", n // 2)
    out = []
    for name, kw in (("embedded (w128, 2 layers)", dict(hidden=128, layers=2)),
                     ("wider (w256, 4 layers)", dict(hidden=256, layers=4))):
        model, tok = lab_model(**kw)
        encs = encode_rows(tok, rows, 64)
        n_params = sum(p.numel() for p in model.parameters())
        t_loop = timeit(lambda: grads_all(model, encs, tok.pad_token_id, "loop", chunk), repeat=2)
        t_vec = timeit(lambda: grads_all(model, encs, tok.pad_token_id, "vectorized", chunk), repeat=2)
        a = grads_all(model, encs, tok.pad_token_id, "vectorized", chunk)
        b = grads_all(model, encs, tok.pad_token_id, "loop", chunk)
        rel = max(float((torch.cat(a[k]) - torch.cat(b[k])).abs().max() / torch.cat(b[k]).abs().max().clamp_min(1e-30))
                  for k in a)
        out.append([name, f"{n_params / 1e6:.2f}M", n / t_loop, n / t_vec, t_loop / t_vec, f"{rel:.1e}"])
    table(f"Per-sample gradients, {n} samples, chunk {chunk} ({machine()})",
          ["model", "params", "loop samples/s", "vectorized samples/s", "speed-up", "max rel diff"], out)


if __name__ == "__main__":
    main()
