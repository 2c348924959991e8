"""Cost growth of the confidence stage: time for |D_self| = 64 .. 1024 at two model widths, with
the fitted slope of log(time) on log(|D_self|) (1.0 = linear).

    python benchmarks/confidence_scaling.py [--quick]
"""
import time

import numpy as np
from _common import lab_model, lab_rows, machine, parser, table

from pipeline.confidence import confidence_scores
from pipeline.fisher import fisher_and_mean_grad


def main(argv=None):
    quick = parser(__doc__).parse_args(argv).quick
    sizes = (4, 8) if quick else (64, 128, 256, 512, 1024)
    pool = lab_rows("lab_conflict", sizes[-1] // 2) + lab_rows("lab_neutral", sizes[-1] // 2)
    out = []
    for width in (128, 256):
        model, tok = lab_model(hidden=width)
        F, gL = fisher_and_mean_grad(model, tok, lab_rows("lab_learn", 8 if quick else 64), 64)
        ts = []
        for n in sizes:
            rows = pool[:n]
            t0 = time.perf_counter()
            confidence_scores(model, tok, rows, F, gL, 64)
            ts.append(time.perf_counter() - t0)
        slope = np.polyfit(np.log(sizes), np.log(ts), 1)[0]
        out.append([f"w{width}"] + ts + [slope, sizes[-1] / ts[-1]])
    table(f"Confidence stage seconds by |D_self| ({machine()})",
          ["model"] + [str(n) for n in sizes] + ["log-log slope", f"samples/s at {sizes[-1]}"], out)


if __name__ == "__main__":
    main()
