"""A short GPU check of the whole pipeline: the SmolLM2 GPU preset (presets/smollm2_gpu.yaml, all
parameters trained) at a reduced budget, offline (vendored rows), in a fresh copy of this project;
prints each stage's wall time and peak GPU memory (the stages log both), and the total.

    python benchmarks/gpu_check.py [--out /tmp/gpu-check] [--quick]

Budget: 3 methods (base, vanilla, lwf) x 1 seed, 200 SST-5 training rows, 40 learning steps, 40 steps
of theta*_L, 64 Fisher rows, 32-token answers. Without a CUDA device it says "not run: no CUDA
device" (exit 3); `--quick` only writes and validates the params (what run_all --quick and the tests run).
"""
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


def main(argv=None) -> int:
    from _common import parser

    p = parser(__doc__)
    p.add_argument("--out", default="/tmp/lwf-gpu-check")
    a = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pipeline.presets import params_text, read_preset

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    skip = {".venv", ".git", "data", "artifacts", "metrics", "logs", "reports", "__pycache__", ".lwf", ".prefect"}

    def ignore(folder, names):  # the code and params only: no outputs, caches or environments
        return [n for n in names if n in skip or (Path(folder).name == ".dvc" and n in ("cache", "tmp"))] \
            if Path(folder) == ROOT or Path(folder).name == ".dvc" else [n for n in names if n == "__pycache__"]

    shutil.copytree(ROOT, out, ignore=ignore)
    _, text = params_text("smollm2_gpu", merge(read_preset("smollm2_gpu"), REDUCED))  # validated
    (out / "params.yaml").write_text(text)
    load_config(out / "params.yaml")
    print(f"params: {out / 'params.yaml'} (smollm2_gpu at a reduced budget)")
    if a.quick:
        return 0
    import torch

    if not torch.cuda.is_available():
        print("not run: no CUDA device")
        return 3
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
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
