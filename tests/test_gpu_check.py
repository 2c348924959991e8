"""benchmarks/gpu_check.py: its reduced SmolLM2 GPU params are complete and valid (what a GPU run
would execute), offline and small; without CUDA the real run says it was not run."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_writes_valid_reduced_offline_params(tmp_path):
    out = tmp_path / "copy"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    from pipeline.config import load_config

    cfg = load_config(out / "params.yaml")
    raw = yaml.safe_load((out / "params.yaml").read_text())
    assert cfg.run.methods == ["base", "vanilla", "lwf"] and cfg.run.seeds == [0]
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.model.trainable is None  # the GPU preset: all parameters
    assert cfg.finetune.max_steps == 40 and cfg.data.learn.n_train == 200
    for task in [raw["data"]["learn"], *raw["data"]["forget"], raw["data"]["general"]]:
        assert task["options"]["source"] == "vendored", task
    assert (out / "dvc.yaml").exists() and (out / "stages").is_dir()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_check_says_not_run_without_cuda(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3 and "not run: no CUDA device" in r.stdout
