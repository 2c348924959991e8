"""`lwf tune` (pipeline/tune.py): the choice rules against brute force on made-up curves, and a
tiny lab run: every point recorded, the choice the argmax of its own table, no test row read,
and `--write` setting the chosen values in params.yaml (comments kept, validated first)."""
import json
import math

import pandas as pd
import pytest

from pipeline.config import ConfigError, load_config, parse_config
from pipeline.tune import choose_recipe, choose_unlearn_lr, tune, write_choice


def curve_table(points: dict, unlearn: dict | None = None) -> pd.DataFrame:
    """points: (lr, step) -> per-seed scores; unlearn: unlearn_lr -> (per-seed scores, per-seed taken of 10)."""
    rows = [{"phase": "learn", "lr": lr, "unlearn_lr": None, "seed": s, "step": step, "val_score": v,
             "d_u_nll": 1.0, "unlearn_taken": 0, "unlearn_scheduled": 0}
            for (lr, step), vals in points.items() for s, v in enumerate(vals)]
    rows += [{"phase": "unlearn", "lr": 1e-3, "unlearn_lr": ulr, "seed": s, "step": 8, "val_score": v,
              "d_u_nll": 2.0, "unlearn_taken": t, "unlearn_scheduled": 10}
             for ulr, (vals, taken) in (unlearn or {}).items() for s, (v, t) in enumerate(zip(vals, taken))]
    return pd.DataFrame(rows)


def test_recipe_rule_best_mean_then_fewer_steps_and_only_the_last_point_under_a_decaying_schedule():
    df = curve_table({(1e-3, 0): [0.1, 0.1], (1e-3, 4): [0.5, 0.7], (1e-3, 8): [0.6, 0.6],
                      (3e-3, 4): [0.9, 0.1], (3e-3, 8): [0.55, 0.55]})
    assert choose_recipe(df, constant=True, steps=8) == (1e-3, 4)  # 0.6 at 4 and at 8: fewer steps
    assert choose_recipe(df, constant=False, steps=8) == (1e-3, 8)  # only step 8 is a run of its own
    df.loc[(df.lr == 3e-3) & (df.step == 8), "val_score"] = 0.61
    assert choose_recipe(df, constant=False, steps=8) == (3e-3, 8)


def test_unlearning_rule_largest_step_within_tolerance_that_the_guard_let_act():
    df = curve_table({(1e-3, 8): [0.60, 0.60]},
                     {0.003: ([0.60, 0.60], [10, 10]), 0.01: ([0.59, 0.60], [10, 9]),
                      0.03: ([0.58, 0.57], [10, 10]), 0.1: ([0.60, 0.61], [10, 2])})
    chosen, rows = choose_unlearn_lr(df, 1e-3, 8, tolerance=0.01)
    assert chosen == 0.01  # 0.03: -0.025 below vanilla; 0.1: the guard stopped it in one seed (20%)
    verdict = {r["unlearn_lr"]: r["verdict"] for r in rows}
    assert verdict[0.003] == verdict[0.01] == "qualifies"
    assert "below -0.01" in verdict[0.03] and "20%" in verdict[0.1]
    assert choose_unlearn_lr(df, 1e-3, 8, tolerance=0.05)[0] == 0.03
    assert choose_unlearn_lr(df[df.unlearn_lr != 0.003].loc[lambda d: d.unlearn_lr != 0.01], 1e-3, 8, 0.0)[0] is None


@pytest.fixture
def lab_project(tmp_path, monkeypatch):
    import stages.base_model
    import stages.confidence
    import stages.elicit
    import stages.fisher
    import stages.optimum
    import stages.prepare

    cfg = parse_config({
        "run": {"seeds": [0], "methods": ["vanilla", "lwf"]},
        "model": {"lab": {"pretrain_steps": 5}},
        "data": {"learn": {"task": "lab_learn", "n_train": 8, "n_test": 6},
                 "forget": [{"task": "lab_conflict", "n_train": 6, "n_test": 4}],
                 "general": {"task": "lab_general", "n_test": 4}},
        "fisher": {"n_samples": 8}, "optimum": {"steps": 4, "n_validation": 8, "eval_every": 2},
        "confidence": {"auroc_positive": [], "auroc_negative": []},
        "finetune": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0},
        "methods": {"vanilla": {}, "lwf": {"unlearn": "periodic", "unlearn_every": 1, "unlearn_batch_size": 2}},
    })
    monkeypatch.chdir(tmp_path)
    for st in (stages.prepare, stages.base_model, stages.optimum, stages.fisher, stages.elicit, stages.confidence):
        st.run(cfg)
    return cfg


def test_tune_on_the_lab_reads_no_test_row_and_chooses_the_argmax_of_its_own_table(lab_project, tmp_path,
                                                                                      monkeypatch):
    import pipeline.stage
    from pipeline.tasks.base import Task

    cfg, read = lab_project, []
    # lwf unlearns after every 2nd learning step, so after the last one (2 or 4): a curve must score after it
    # (guard_max_rise 1.0: this random model's steps raise the guard rows' perplexity by more than 10%)
    lwf = cfg.methods["lwf"].model_copy(update={"unlearn_every": 2, "guard_max_rise": 1.0})
    cfg = cfg.model_copy(update={"methods": {**cfg.methods, "lwf": lwf}})

    def spy(real):
        return lambda self, split, *a, **k: read.append(split) or real(self, split, *a, **k)

    classes = [Task]
    while classes:  # every task class that defines its own `load`
        cls = classes.pop()
        classes += cls.__subclasses__()
        if "load" in cls.__dict__:
            monkeypatch.setattr(cls, "load", spy(cls.__dict__["load"]))
    real_rows = pipeline.stage.load_rows
    monkeypatch.setattr(pipeline.stage, "load_rows", lambda path, split: read.append(split) or real_rows(path, split))
    choice = tune(cfg, lrs=[1e-3, 1e-2], steps=4, at=[2], unlearn_lrs=[0.01, 0.1], seeds=[0, 1], n_val=8,
                  method="lwf", tolerance=1.0, out=tmp_path / "tune")
    assert "test" not in read and "validation" in read
    df = pd.read_csv(tmp_path / "tune/curve.csv")
    learn = df[df.phase == "learn"]
    assert sorted(set(zip(learn.lr, learn.step))) == [(1e-3, 0), (1e-3, 2), (1e-3, 4), (1e-2, 0), (1e-2, 2), (1e-2, 4)]
    assert len(learn) == 12 and learn.val_score.between(0, 1).all()
    # brute force: the (lr, step > 0) of the highest mean, fewer steps then smaller lr first (constant schedule)
    means = learn[learn.step > 0].groupby(["lr", "step"]).val_score.mean()
    top = max(means.items(), key=lambda kv: (kv[1], -kv[0][1], -kv[0][0]))[0]
    assert (choice["finetune.lr"], choice["finetune.max_steps"]) == top
    unlearn = df[df.phase == "unlearn"]
    assert sorted(set(unlearn.unlearn_lr)) == [0.01, 0.1] and (unlearn.step == choice["finetune.max_steps"]).all()
    assert (unlearn.unlearn_scheduled > 0).all() and unlearn.d_u_nll.map(math.isfinite).all()
    assert all(c["d_u_nll_vs_vanilla"] > 0 for c in choice["candidates"]), choice["candidates"]
    # tolerance 1.0: every candidate the guard let act qualifies, so the largest of those is chosen
    acting = [c["unlearn_lr"] for c in choice["candidates"] if c["min_taken"] >= 0.9]
    assert choice["lwf.unlearn_lr"] == (max(acting) if acting else cfg.methods["lwf"].unlearn_lr)
    assert json.loads((tmp_path / "tune/choice.json").read_text())["finetune.lr"] == choice["finetune.lr"]
    assert (tmp_path / "tune/curve.png").stat().st_size > 0 and "Chosen recipe" in (tmp_path / "tune/tune.md").read_text()


def test_write_sets_the_choice_in_params_keeping_comments_and_refuses_an_invalid_one(tmp_path):
    from pipeline.presets import write_params

    params = tmp_path / "params.yaml"
    write_params("lab", params)
    choice = {"finetune.lr": 0.002, "finetune.max_steps": 24, "method": "lwf", "lwf.unlearn_lr": 0.05}
    assert write_choice(choice, params).startswith("unlearning.unlearn_lr")  # lwf takes the recipe's step
    cfg = load_config(str(params))
    assert (cfg.finetune.lr, cfg.finetune.max_steps, cfg.methods["lwf"].unlearn_lr) == (0.002, 24, 0.05)
    assert cfg.unlearning.unlearn_lr == 0.05 and cfg.methods["lwf_low"].unlearn_lr == 0.05
    params.write_text(params.read_text().replace("lwf: {unlearn: periodic, selection: high}",
                                                 "lwf: {unlearn: periodic, selection: high, unlearn_lr: 0.2}"))
    assert write_choice({**choice, "lwf.unlearn_lr": 0.07}, params) == "methods.lwf.unlearn_lr"  # its own step
    cfg = load_config(str(params))
    assert cfg.methods["lwf"].unlearn_lr == 0.07 and cfg.unlearning.unlearn_lr == 0.05
    assert "# the learning recipe every method shares" in params.read_text()
    before = params.read_text()
    with pytest.raises(ConfigError, match="max_steps"):
        write_choice({**choice, "finetune.max_steps": 0}, params)
    assert params.read_text() == before
