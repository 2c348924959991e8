"""Which stages run under `accelerate launch`, in dvc.yaml and in the Prefect flow."""
import sys
from pathlib import Path

import yaml

from pipeline.config import parse_config
from pipeline.flow import launch_command
from pipeline.launch import DISTRIBUTED

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_launches_exactly_the_distributed_stages():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    launched = {name for name, st in stages.items()
                if (st.get("do", st)["cmd"]).startswith("python -m pipeline.launch")}
    assert launched == set(DISTRIBUTED)


def test_flow_runs_distributed_stages_under_launch_only_with_several_processes():
    one = parse_config({})
    four = parse_config({"launch": {"num_processes": 4}})
    assert launch_command("finetune", one, "params.yaml", {"method": "lwf", "seed": 0}) is None
    assert launch_command("report", four, "p.yaml", {}) is None
    assert launch_command("finetune", four, "p.yaml", {"method": "lwf", "seed": 0}) == [
        sys.executable, "-m", "pipeline.launch", "stages.finetune", "--params", "p.yaml", "method=lwf", "seed=0"]
