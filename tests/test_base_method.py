"""The `base` method (MethodConfig.train: false): the finetune stage writes the base model
unchanged, its row's scores are the base model's own, and its delta vs vanilla has the sign of a
case where fine-tuning is known to help."""
import copy
import json

import pandas as pd
import pytest

from conftest import tiny_lab
from pipeline import paths
from pipeline.config import ConfigError, EvaluateConfig, FinetuneConfig, MethodConfig, parse_config
from pipeline.evaluate import evaluate_model
from pipeline.io import save_pretrained
from pipeline.report import summarize
from pipeline.tasks import get_task
from pipeline.train import finetune


def _scores(model, tok, cfg, general):
    learn = get_task("lab_learn").load("test", 8, 0, {})
    forget = {"lab_conflict": get_task("lab_conflict").load("test", 8, 0, {})}
    return evaluate_model(model, tok, cfg.data, learn, forget, general, EvaluateConfig(max_new_tokens=4))


def test_base_row_is_the_base_model_and_fine_tuning_beats_it(tmp_path, monkeypatch):
    import stages.finetune
    from pipeline.models import load_model

    cfg = parse_config({"run": {"methods": ["base", "vanilla"], "seeds": [0, 1]},
                        "data": {"forget": [{"task": "lab_conflict"}]},
                        "confidence": {"auroc_positive": [], "auroc_negative": []}})
    model, tok = tiny_lab(layers=2, seed=3)
    monkeypatch.chdir(tmp_path)
    save_pretrained(paths.BASE_MODEL, model, tok)
    for seed in cfg.run.seeds:
        stages.finetune.run(cfg, method="base", seed=seed)
        d = paths.model_dir("base", seed)
        for f in paths.BASE_MODEL.iterdir():  # the base model's files, byte for byte
            assert (d / f.name).read_bytes() == f.read_bytes(), f.name
        stats = json.loads((d / "train_stats.json").read_text())
        assert stats["trained"] is False and stats["learn_steps"] == stats["optimizer_steps"] == 0
        assert pd.read_csv(paths.train_log("base", seed)).empty
    general = get_task("lab_general").load("test", 12, 0, {})
    own = _scores(model, tok, cfg, general)
    row_model, row_tok = load_model(paths.model_dir("base", 1), cfg.model, device="cpu")
    row = _scores(row_model, row_tok, cfg, general)
    assert row["items"] == own["items"] and row["perplexity"] == own["perplexity"]

    # a known case: vanilla fine-tuned on the held-out general text itself has a lower perplexity
    # on it than the base model, so base - vanilla is positive with its whole interval above 0
    evals = {"base": {"seeds": {}}, "vanilla": {"seeds": {}}}
    for seed in cfg.run.seeds:
        tuned = copy.deepcopy(model)
        finetune(tuned, tok, general, [], FinetuneConfig(max_steps=30, batch_size=6, lr=3e-3, warmup_steps=0,
                                                         checkpoint_every=10**6), MethodConfig(), seed, 64)
        evals["vanilla"]["seeds"][str(seed)] = _scores(tuned, tok, cfg, general)
        evals["base"]["seeds"][str(seed)] = row
    s = summarize(evals, cfg.run.seeds, n_boot=200)
    assert s["base"]["perplexity"] == pytest.approx(own["perplexity"]) and s["base"]["perplexity_std"] == 0
    assert s["base"]["perplexity_delta"] > 0 and s["base"]["perplexity_delta_ci95"][0] > 0
    assert "perplexity_delta" not in s["vanilla"]  # vanilla stays the reference


@pytest.mark.parametrize("method, needle", [
    ({"train": False, "unlearn": "periodic"}, "train: false"),
    ({"train": False, "bss": True}, "train: false"),
])
def test_untrained_method_cannot_unlearn(method, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config({"methods": {"vanilla": {}, "b": method}, "run": {"methods": ["vanilla", "b"]}})


def test_vanilla_must_train():
    with pytest.raises(ConfigError, match="methods.vanilla must be plain fine-tuning"):
        parse_config({"methods": {"vanilla": {"train": False}}, "run": {"methods": ["vanilla"]}})


def test_base_is_in_every_shipped_run():
    """params.yaml and every preset run `base` first, then vanilla (each report reads base -> vanilla -> methods)."""
    from pathlib import Path

    from pipeline.config import read_params

    root = Path(__file__).resolve().parents[1]
    for p in [root / "params.yaml", *sorted((root / "presets").glob("*.yaml"))]:
        raw = read_params(p)
        assert raw["run"]["methods"][:2] == ["base", "vanilla"], p.name
        assert raw["methods"]["base"] == {"train": False}, p.name
