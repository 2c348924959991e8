"""What starting one stage process costs before it does any work: a fresh Python process per
command, side by side (best of 3 after a warm-up, so the files are in the page cache): the bare
interpreter, torch, torch + pandas, transformers' Llama class, a stage module's own imports
(`stages.finetune`), and a whole model load (the lab base model through `pipeline.models.load_model`,
the path every model stage takes). Multiplied by the stages of the default pipeline that load a
model, it is the part of a `dvc repro` spent starting processes (docs/performance.md).

    python benchmarks/stage_startup.py [--quick]
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import lab_model, machine, parser, table

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ("python -c pass", "pass"),
    ("import torch", "import torch"),
    ("import torch, pandas", "import torch, pandas"),
    ("from transformers import LlamaForCausalLM", "import torch; from transformers import LlamaForCausalLM"),
    ("import stages.finetune", "import stages.finetune"),
    ("load_model(lab base model)", "from pipeline.config import ModelConfig; from pipeline.models import load_model; "
                                   "load_model({path!r}, ModelConfig())"),
]


def wall(code: str, repeat: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    best = float("inf")
    for i in range(repeat + 1):  # the first run warms the page cache and is not counted
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def model_stages() -> int:
    """Stages of the default `dvc repro` that load a model: code deps include pipeline/models.py, foreach
    expanded; the prefix-cache stages only with `model.prefix_cache`, the control's only when enabled."""
    import yaml

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    n = 0
    for name, st in spec.items():
        body = st.get("do", st)
        if "pipeline/models.py" not in body.get("deps", []):
            continue
        items = st.get("foreach")
        if name == "lm_eval":  # one per method and listed task
            n += len(params["run"]["methods"]) * len(params["lm_eval"]["tasks"])
        elif items is not None:
            n += len(params["run"]["methods"])
        elif name.startswith("prefix_"):
            n += bool(params["model"]["prefix_cache"])
        elif name.endswith("_control") or name == "control_model":
            n += bool(params["control"]["enabled"])
        else:
            n += 1
    return n


def main(argv=None):
    a = parser(__doc__).parse_args(argv)
    repeat = 1 if a.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = lab_model()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        rows = [[label, wall(code.format(path=tmp), repeat)] for label, code in COMMANDS]
    base = rows[0][1]
    n = model_stages()
    load = rows[-1][1]
    table(f"Start-up of one process, best of {repeat} (seconds); {machine()}",
          ["what the process does", "wall (s)", "over the bare interpreter (s)"],
          [[label, f"{t:.2f}", f"{t - base:.2f}"] for label, t in rows])
    table("The default pipeline's model stages", ["stages that load a model", "start-up each (s)", "together (s)"],
          [[n, f"{load:.2f}", f"{n * load:.0f}"]])


if __name__ == "__main__":
    main()
