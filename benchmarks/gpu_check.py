"""A short GPU check of the whole pipeline: the SmolLM2 GPU preset (presets/smollm2_gpu.yaml, all
parameters trained) at a reduced budget, offline (vendored rows), in a fresh copy of this project;
prints each stage's wall time and peak GPU memory (the stages log both), and the total.

    python benchmarks/gpu_check.py [--out /tmp/gpu-check] [--dry-run]

Budget: 3 methods (base, vanilla, lwf) x 1 seed, 200 SST-5 training rows, 40 learning steps, 40 steps
of theta*_L, 64 Fisher rows, 32-token answers. Without a CUDA device it stops with "not run: no CUDA
device" (exit 3); `--dry-run` only writes and validates the params (the test suite runs that).
"""
import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDUCED = {  # on top of presets/smollm2_gpu.yaml: small, offline
    "run": {"seeds": [0], "methods": ["base", "vanilla", "lwf"]},
    "data": {"learn": {"task": "sst5", "n_train": 200, "n_test": 100, "options": {"source": "vendored", "scoring": "loglik"}},
             "forget": [{"task": "psychol", "n_train": 64, "n_test": 50,
                         "options": {"source": "vendored", "scoring": "loglik", "continuations": "letters"}}],
             "general": {"task": "custom", "n_train": 1, "n_test": 50,
                         "options": {"source": "vendored", "hub_id": "openai/gsm8k", "hub_config": "main",
                                     "prompt_field": "question", "target_field": "question", "prompt_template": "",
                                     "metric": "none"}},
             "max_length": 384},
    "fisher": {"n_samples": 64}, "elicit": {"max_new_tokens": 32}, "optimum": {"steps": 40},
    "finetune": {"max_steps": 40}, "model": {"device": "auto"},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        whole = k in ("learn", "general", "methods")  # a task and `methods` are given whole, as in a preset
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and not whole else v
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/lwf-gpu-check")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pipeline.presets import params_text, read_preset

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(ROOT, out, ignore=shutil.ignore_patterns(".venv", ".git", "data", "artifacts", "metrics", "logs",
                                                             "reports", ".dvc/cache", ".dvc/tmp", "__pycache__"))
    _, text = params_text("smollm2_gpu", merge(read_preset("smollm2_gpu"), REDUCED))  # validated
    (out / "params.yaml").write_text(text)
    load_config(out / "params.yaml")
    print(f"params: {out / 'params.yaml'} (smollm2_gpu at a reduced budget)")
    if a.dry_run:
        return
    import torch

    if not torch.cuda.is_available():
        print("not run: no CUDA device")
        raise SystemExit(3)
    subprocess.run(["git", "init", "-q"], cwd=out, check=True)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=out, capture_output=True, text=True)
    wall = time.time() - t0
    log = r.stdout + r.stderr
    (out / "gpu_check.log").write_text(log)
    rows = re.findall(r"stage (\S+): done in ([\d.]+)s(?:, peak GPU memory ([\d.]+) GiB)?", log)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; dvc repro exit {r.returncode}, "
          f"wall {wall:.0f} s\n\n| stage | seconds | peak GPU memory (GiB) |\n|---|---|---|")
    for name, sec, mem in rows:
        print(f"| {name} | {float(sec):.1f} | {mem or '-'} |")
    if r.returncode:
        print(log[-3000:])
        raise SystemExit(r.returncode)


if __name__ == "__main__":
    main()
