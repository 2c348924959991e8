"""Run every benchmark and print one report (docs/performance.md).

    python benchmarks/run_all.py [PROJECT_DIR_WITH_A_COMPLETED_REPRO]
"""
import sys

import confidence_scaling
import finetune_overhead
import generation
import grads
import pipeline_overhead
from _common import machine

if __name__ == "__main__":
    print(f"# lwf-pipeline benchmarks\n\nMachine: {machine()}")
    for mod in (grads, generation, finetune_overhead, confidence_scaling):
        mod.main()
    pipeline_overhead.main(sys.argv[1] if len(sys.argv) > 1 else None)
