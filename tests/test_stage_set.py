"""The stages DVC makes of dvc.yaml and the shipped params (DVC's own parser): every one has work to
do. lm-eval runs one stage per method and listed task, so with no task listed (the default) there is
none; each process a stage starts costs a Python start-up and DVC's bookkeeping (benchmarks/dvc_repro.py)."""
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage_names(tmp_path: Path, change=None) -> dict[str, str]:
    """name -> cmd of every stage of dvc.yaml under the shipped params.yaml (with `change` applied)."""
    from dvc.repo import Repo

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (change or (lambda r: None))(raw)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        return {s.name: s.cmd for s in repo.index.stages}


def test_default_pipeline_has_no_lm_eval_stage(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["lm_eval"]["tasks"] == []
    names = stage_names(tmp_path)
    methods, seeds = raw["run"]["methods"], raw["run"]["seeds"]
    assert not [n for n in names if n.startswith("lm_eval")]
    assert {f"finetune@{m}" for m in methods} | {f"evaluate@{m}" for m in methods} <= set(names)
    # one fine-tune process per method whatever the seeds (the seeds run inside it), the control's one
    assert len(names) == 9 + 2 * len(methods) + 3 and len(seeds) > 1, sorted(names)


def test_one_lm_eval_stage_per_method_and_listed_task(tmp_path):
    def change(raw):
        raw["run"]["methods"] = ["vanilla", "lwf"]
        raw["lm_eval"]["tasks"] = ["lwf_sst5", "lwf_psychol"]

    names = stage_names(tmp_path, change)
    lm = {n: cmd for n, cmd in names.items() if n.startswith("lm_eval")}
    assert lm == {f"lm_eval@{m}-{t}": f"python -m stages.lm_eval method={m} task={t}"
                  for m in ("vanilla", "lwf") for t in ("lwf_sst5", "lwf_psychol")}
