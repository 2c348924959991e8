"""Run every benchmark and print one report (README "Performance")."""
import confidence_scaling
import finetune_overhead
import generation
import grads
import pipeline_overhead
from _common import machine

if __name__ == "__main__":
    print(f"# lwf-pipeline benchmarks\n\nMachine: {machine()}")
    for mod in (grads, generation, finetune_overhead, confidence_scaling, pipeline_overhead):
        mod.main()
