"""Generation: tokens/s batched (left-padded, KV cache, length-sorted) vs one prompt at a time.
Target: >= 4x.

    python benchmarks/generation.py [--quick]
"""
from _common import lab_model, lab_rows, machine, parser, table, timeit

from pipeline.generation import generate


def main(argv=None):
    n, max_new = (4, 2) if parser(__doc__).parse_args(argv).quick else (128, 12)
    model, tok = lab_model()
    prompts = [r["prompt"] for r in lab_rows("lab_conflict", n // 2) + lab_rows("lab_neutral", n // 2)]
    # greedy: both modes produce the same tokens; count them (EOS included when reached)
    toks = sum(g["n_tokens"] + (not g["truncated"]) for g in generate(model, tok, prompts, max_new, progress=False))
    t_one = timeit(lambda: [generate(model, tok, [p], max_new, batch_size=1, progress=False) for p in prompts], 1)
    t_bat = timeit(lambda: generate(model, tok, prompts, max_new, batch_size=64, progress=False), 2)
    table(f"Generation, {n} prompts x {max_new} new tokens ({machine()})",
          ["mode", "tokens/s", "speed-up"], [["one prompt at a time", toks / t_one, 1.0],
                                              ["batched (64), KV cache", toks / t_bat, t_one / t_bat]])


if __name__ == "__main__":
    main()
