"""Which stages run under `accelerate launch` (dvc.yaml; the Prefect flow runs the same commands through DVC); how it is started."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.launch import DISTRIBUTED

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_launches_exactly_the_distributed_stages():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cmds = [st.get("do", st)["cmd"] for st in stages.values()]
    launched = {c.split()[3] for c in cmds if c.startswith("python -m pipeline.launch")}  # the stage module
    assert launched == {f"stages.{name}" for name in DISTRIBUTED}  # the control's stages run the same modules
    assert not {c.split()[2] for c in cmds if c.startswith("python -m stages.")} & launched


def test_launcher_is_accelerate_run_by_this_interpreter(tmp_path, monkeypatch):
    """No `accelerate` executable on PATH is needed: the same command line as `accelerate launch`,
    run by this Python."""
    from pipeline import launch

    (tmp_path / "p.yaml").write_text("launch: {num_processes: 2, mixed_precision: bf16}\n")
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []

    def fake_exec(exe, cmd):
        calls.append(cmd)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_exec)
    monkeypatch.setattr(os, "execvp", fake_exec)
    with pytest.raises(SystemExit):
        launch.main(["stages.fisher", "--params", str(tmp_path / "p.yaml")])
    assert calls == [[sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
                      "-m", "stages.fisher", "--params", str(tmp_path / "p.yaml")]]


def test_missing_accelerate_is_one_line_naming_the_extra(tmp_path):
    (tmp_path / "params.yaml").write_text("launch: {num_processes: 2}\n")
    block = "import sys; sys.modules['accelerate'] = None; from pipeline.launch import main; main()"  # not importable
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}  # and no `accelerate` executable on PATH:
    r = subprocess.run([sys.executable, "-c", block, "stages.fisher"], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "PATH": os.defpath, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("lwf: error: launch.num_processes = 2 needs Hugging Face Accelerate")
    assert 'pip install -e ".[dist]"' in r.stderr and r.stderr.count("\n") == 1
