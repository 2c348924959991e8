"""The finetune stage runs every seed of a method in one process (one DVC stage per method): each
seed's result equals that seed run alone, and a stage stopped during a later seed restores the
seeds it had finished instead of training them again (DVC deletes the outputs before a rerun)."""
import shutil

import pytest

from pipeline import paths
from pipeline.config import parse_config
from pipeline.train import Finetune

CFG = {"run": {"seeds": [0, 1], "methods": ["vanilla"]},
       "model": {"lab": {"pretrain_steps": 5}},
       "data": {"learn": {"task": "lab_learn", "n_train": 8, "n_test": 4},
                "forget": [{"task": "lab_conflict", "n_train": 4, "n_test": 4}],
                "general": {"task": "lab_general", "n_test": 4}},
       "confidence": {"auroc_positive": [], "auroc_negative": []},
       "finetune": {"max_steps": 3, "batch_size": 4, "warmup_steps": 0}}


def outputs(seed: int) -> tuple[bytes, str]:
    return ((paths.model_dir("vanilla", seed) / "model.safetensors").read_bytes(),
            paths.train_log("vanilla", seed).read_text())


def dvc_deletes_outputs():
    shutil.rmtree(paths.MODELS)
    shutil.rmtree(paths.TRAIN_LOGS)


def test_a_stopped_stage_restores_its_finished_seeds(tmp_path, monkeypatch):
    import stages.base_model
    import stages.finetune
    import stages.prepare

    cfg = parse_config(CFG)
    monkeypatch.chdir(tmp_path)
    stages.prepare.run(cfg)
    stages.base_model.run(cfg)
    stages.finetune.run(cfg, method="vanilla")
    reference = {seed: outputs(seed) for seed in (0, 1)}
    assert reference[0] != reference[1] and not list(paths.CHECKPOINTS.glob("*.finished"))
    stages.finetune.run(cfg, method="vanilla", seed=1)  # seed 1 alone (its own process before) = after seed 0
    assert outputs(1) == reference[1]

    trained, real_run = [], Finetune.run

    def stopped_in_seed_1(run, *a, **k):
        trained.append(run.seed)
        if run.seed == 1 and stop:
            raise KeyboardInterrupt
        return real_run(run, *a, **k)

    monkeypatch.setattr(Finetune, "run", stopped_in_seed_1)
    for changed in (False, True):
        dvc_deletes_outputs()
        stop, trained[:] = True, []
        with pytest.raises(KeyboardInterrupt):
            stages.finetune.run(cfg, method="vanilla")
        assert trained == [0, 1] and paths.finished("vanilla", 0).is_dir()
        dvc_deletes_outputs()
        stop, trained[:] = False, []
        rerun = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"lr": 1e-3})}) if changed else cfg
        stages.finetune.run(rerun, method="vanilla")
        if not changed:  # seed 0 restored, not trained again; both seeds as uninterrupted
            assert trained == [1] and {seed: outputs(seed) for seed in (0, 1)} == reference
        else:  # another setting: the kept seed belongs to another run and is trained anew
            assert trained == [0, 1] and outputs(0) != reference[0]
        assert not list(paths.CHECKPOINTS.glob("*.finished"))
