"""Wall time of the `lwf` fine-tune vs `vanilla` on the same budget.
Target: lwf / vanilla <= 1.15 + 1/unlearn_every.

    python benchmarks/finetune_overhead.py [--quick]
"""
import time

from _common import lab_model, lab_rows, machine, parser, table

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.train import finetune


def main(argv=None):
    steps, every, repeat = (4, 2, 1) if parser(__doc__).parse_args(argv).quick else (120, 4, 3)
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


if __name__ == "__main__":
    main()
