"""The evaluate stage keeps what every score came from (artifacts/eval/<method>.generations.parquet):
per seed, task and test row the prompt, the gold answer, the generation (or the option ranked first
under loglik scoring) and the row's score. Run here on tiny models: the saved scores are the ones
the report aggregates, and each saved generation scores again to its saved score."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_lab
from pipeline import paths
from pipeline.config import parse_config
from pipeline.generation import generate
from pipeline.io import save_pretrained
from pipeline.report import summarize
from pipeline.tasks import get_task

MC = [  # a loglik forgetting task: the option with the highest log-likelihood is the answer
    {"prompt": "Q: one?", "choices": ["a b", "a", "a c", "b"], "answer": "C"},
    {"prompt": "Question: which two", "choices": ["xy", "zw", "x", "xyz"], "answer": "A"},
    {"prompt": "Q3", "choices": ["very negative", "negative", "neutral", "positive", "very positive"], "answer": "E"},
    {"prompt": "Q4: pick", "choices": ["red", "green", "blue", "none"], "answer": "B"},
]


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    """The evaluate stage run on two seeds' tiny models (different weights) of `vanilla`: a generated
    learning task whose gold answers are half the seed-0 model's own outputs (so rows score 1 and 0),
    a generated and a loglik forgetting task."""
    import stages.evaluate

    cfg = parse_config({"run": {"methods": ["base", "vanilla"], "seeds": [0, 1]},
                        "data": {"forget": [{"task": "lab_conflict"},
                                            {"task": "psychol", "options": {"scoring": "loglik"}}]},
                        "evaluate": {"max_new_tokens": 4, "batch_size": 3},
                        "confidence": {"auroc_positive": [], "auroc_negative": []}})
    monkeypatch.chdir(tmp_path)
    models = {0: tiny_lab(seed=0), 1: tiny_lab(seed=3)}
    for seed, (model, tok) in models.items():
        save_pretrained(paths.model_dir("vanilla", seed), model, tok)
        (paths.model_dir("vanilla", seed) / "train_stats.json").write_text("{}")
    learn = get_task("lab_learn").load("test", 6, 0, {})
    model, tok = models[0]
    own = generate(model, tok, [r["prompt"] for r in learn], max_new_tokens=4, batch_size=3, progress=False)
    learn = [dict(r, answer=g["response"].strip().splitlines()[0] if g["response"].strip() else "x") if i % 2 else r
             for i, (r, g) in enumerate(zip(learn, own))]
    forget = {"lab_conflict": get_task("lab_conflict").load("test", 5, 0, {}), "psychol": MC}
    general = get_task("lab_general").load("test", 4, 0, {})
    monkeypatch.setattr(stages.evaluate, "held_out", lambda cfg, method=None: (learn, forget, general))
    monkeypatch.setattr(stages.evaluate, "nll_sets", lambda cfg, m: {"d_u": learn[:2]})
    stages.evaluate.run(cfg, method="vanilla")
    return cfg, json.loads(paths.eval_file("vanilla").read_text()), pd.read_parquet(paths.generations_file("vanilla"))


def test_saved_row_scores_are_the_scores_the_report_aggregates(evaluated):
    cfg, ev, gens = evaluated
    from pipeline.evaluate import GENERATION_COLUMNS

    assert list(gens.columns) == GENERATION_COLUMNS
    assert set(gens["method"]) == {"vanilla"} and sorted(set(gens["seed"])) == [0, 1]
    assert set(gens["split"]) == {"learn", "forget/lab_conflict", "forget/psychol"}
    for (seed, split), g in gens.groupby(["seed", "split"]):
        g = g.sort_values("row")
        assert list(g["row"]) == list(range(len(g)))
        assert list(g["score"]) == ev["seeds"][str(seed)]["items"][split], (seed, split)
    learn = gens[gens["split"] == "learn"]
    assert 0 < learn["score"].mean() < 1  # both outcomes are kept, not only one
    evals = {"vanilla": ev, "base": ev}
    s = summarize(evals, cfg.run.seeds, 50)["vanilla"]
    assert s["learn_score"] == pytest.approx(learn.groupby("seed")["score"].mean().mean())
    for key, score in s["forget_scores"].items():
        assert score == pytest.approx(gens[gens["split"] == f"forget/{key}"].groupby("seed")["score"].mean().mean())


def test_each_saved_generation_scores_again_to_its_saved_score(evaluated):
    cfg, ev, gens = evaluated
    tasks = {"learn": get_task(cfg.data.learn.task, cfg.data.learn.options),
             **{f"forget/{r.key}": get_task(r.task, r.options) for r in cfg.data.forget}}
    for _, r in gens.iterrows():
        task = tasks[r["split"]]
        assert r["task"] == task.name and r["scoring"] == task.scoring
        choices = None if r["choices"] is None else list(r["choices"])
        assert task.score(r["generation"], r["answer"], choices) == r["score"], dict(r)
    mc = gens[gens["split"] == "forget/psychol"]
    assert mc["chosen"].notna().all() and (gens[gens["split"] != "forget/psychol"]["chosen"].isna()).all()
    for _, r in mc.iterrows():  # loglik: the generation is the option ranked first
        assert r["generation"] == list(r["choices"])[r["chosen"]]
    assert set(np.unique(mc["score"])) <= {0.0, 1.0}
