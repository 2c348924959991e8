"""The benchmarks (benchmarks/) and the studies (experiments/). Every benchmark's `--quick` path runs
against today's `pipeline` (tiny sizes, seconds: a renamed argument or removed name fails here, not
in a later measurement) and run_all.py lists every benchmark file. Each study folder has a README
and its scripts say what they do; the studies' cheapest real paths run where they take seconds, and
the helpers their tables are computed with give known answers on hand-made inputs. The studies that
need a finished pipeline run (lab_calibration, lab_design_search, aggregate_runs) run on the e2e
test's project (tests/test_e2e.py); the SmolLM2 benchmarks are marked `real`, and pipeline_overhead
and paper_memory `e2e` (minutes: a Prefect server start; fake tensors through 30 blocks)."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import markdown_table_rows

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
EXP = ROOT / "experiments"
STUDIES = sorted(p for p in EXP.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


@pytest.fixture(autouse=True)
def _script_paths(monkeypatch):
    """As `python benchmarks/x.py` or `python experiments/<study>/x.py` finds its neighbours."""
    for p in [ROOT, EXP, *STUDIES, BENCH]:
        monkeypatch.syspath_prepend(str(p))


def _fresh(name):
    sys.modules.pop(name, None)
    mod = importlib.import_module(name)
    assert mod.__doc__, f"{name} does not say what it measures and how to run it"
    return mod


_table = markdown_table_rows


def _needs_smollm2():
    from pipeline.models import packaged_gguf

    try:
        packaged_gguf("smollm2-135m-instruct")
    except ValueError as e:
        pytest.skip(str(e))


# benchmarks


def test_run_all_lists_every_benchmark_file():
    """A new benchmarks/*.py cannot be forgotten by run_all.py."""
    listed = _fresh("run_all").BENCHMARKS
    present = {p.stem for p in BENCH.glob("*.py")} - {"run_all", "_common"}
    assert len(listed) == len(set(listed)) and set(listed) == present


def test_run_all_quick_runs_each_benchmark_quick_and_reports_failures(monkeypatch, capsys):
    """Each benchmark's main gets ["--quick"] (stubbed here: each quick path runs for real below),
    pipeline_overhead also the project; a failing one is reported, the rest still run, exit 1."""
    run_all = _fresh("run_all")
    called = []
    for name in run_all.BENCHMARKS:
        def main(argv, _n=name):
            called.append((_n, argv))
            if _n == "generation":
                raise RuntimeError("broken")

        monkeypatch.setattr(_fresh(name), "main", main)
    assert run_all.main(["--quick", "--project", "/some/run"]) == 1
    assert [n for n, _ in called] == run_all.BENCHMARKS
    assert all(argv == ["--quick"] + (["/some/run"] if n == "pipeline_overhead" else []) for n, argv in called)
    assert "failed: generation" in capsys.readouterr().err


def test_grads_quick(capsys):
    _fresh("grads").main(["--quick"])
    rows = _table(capsys.readouterr().out, "Per-sample gradients, 4 samples")
    assert len(rows) == 2 and all(float(r[-1]) < 1e-4 for r in rows)  # vectorized == loop


def test_generation_quick(capsys):
    _fresh("generation").main(["--quick"])
    rows = _table(capsys.readouterr().out, "Generation, 4 prompts x 2 new tokens")
    assert [r[0] for r in rows] == ["one prompt at a time", "batched (64), KV cache"]


def test_finetune_overhead_quick(capsys):
    _fresh("finetune_overhead").main(["--quick"])
    rows = _table(capsys.readouterr().out, "Fine-tune wall time, 4 learning steps")
    assert [r[0] for r in rows] == ["vanilla", "lwf"] and float(rows[1][1]) > 0


def test_confidence_scaling_quick(capsys):
    _fresh("confidence_scaling").main(["--quick"])
    rows = _table(capsys.readouterr().out, "Confidence stage seconds")
    assert [r[0] for r in rows] == ["w128", "w256"]


def test_stage_startup_quick(capsys):
    """One row per start-up command; a model load costs more than importing torch; the default
    pipeline's model stages are counted from dvc.yaml and params.yaml: the six stages before the
    fine-tunes that load one (base_model, control_model, elicit, optimum, fisher, confidence), the
    control's fine-tune and evaluation, and one fine-tune and one evaluation per method."""
    import yaml

    _fresh("stage_startup").main(["--quick"])
    out = capsys.readouterr().out
    rows = {r[0]: float(r[1]) for r in _table(out, "Start-up of one process")}
    assert len(rows) == 6 and rows["load_model(lab base model)"] > rows["import torch"] > rows["python -c pass"]
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["run"]["methods"]
    (n, each, together), = _table(out, "The default pipeline's model stages")
    assert int(n) == 6 + 2 + 2 * len(methods) and abs(float(together) - int(n) * float(each)) <= 0.5 + int(n) * 0.005


@pytest.mark.e2e
def test_pipeline_overhead_quick_without_a_project(capsys):
    """Prefect's costs (a temporary server start); no `dvc repro` where no finished run is given."""
    _fresh("pipeline_overhead").main(["--quick"])
    rows = _table(capsys.readouterr().out, "Orchestration overhead")
    assert "no project" in rows[0][1] and float(rows[-1][1]) > 0


@pytest.mark.real
def test_real_step_quick(capsys):
    _needs_smollm2()
    _fresh("real_step").main(["--quick"])
    rows = _table(capsys.readouterr().out, "SmolLM2-135M-Instruct, batch (2, 32)")
    assert [r[0] for r in rows] == ["step, last block trainable", "forward only, no gradients"]


@pytest.mark.real
def test_finetune_overhead_real_quick(capsys):
    _needs_smollm2()
    _fresh("finetune_overhead").main(["--quick", "--real"])
    out = capsys.readouterr().out
    rows = _table(out, "SmolLM2-135M-Instruct fine-tune wall time")
    assert [r[0] for r in rows][:2] == ["vanilla", "lwf"] and len(rows) == 4
    assert float(out.split("mean NLL differ by ")[1].split()[0]) < 1e-4


@pytest.mark.real
def test_prefix_cache_quick(capsys):
    _needs_smollm2()
    _fresh("prefix_cache").main(["--quick"])
    out = capsys.readouterr().out
    assert "fine-tune, 1 steps" in out and float(out.split("max relative difference of the losses: ")[1].split()[0]) < 1e-3


@pytest.mark.real
def test_lm_eval_cpu_quick(capsys):
    _needs_smollm2()
    pytest.importorskip("lm_eval")
    _fresh("lm_eval_cpu").main(["--quick"])
    out = capsys.readouterr().out
    assert '"task": "lwf_psychol", "docs": 2' in out and '"parity"' in out


@pytest.mark.e2e  # slow, not heavy: fake tensors through 30 blocks under MemTracker (1-5 min on 2 cores)
def test_paper_memory_quick(capsys, tmp_path):
    import json

    out = tmp_path / "mem.json"
    _fresh("paper_memory").main(["--quick", "--params", str(ROOT / "presets/smollm2_gpu.yaml"), "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [r["stage"] for r in results] == ["fisher", "optimum", "confidence", "finetune", "unlearn", "generation"]
    assert all(r["peak_gib"] > 0 for r in results) and capsys.readouterr().out


# studies

def test_conflict_validation_scores_on_validation_and_applies_its_rule():
    """The conflict preset's validation study: SST-5's validation split in place of the test split
    (learning and sentiment rows; no test row is scored), the larger candidate step one more
    method; its rule takes the larger step only where the oracle takes >= 90% of its steps in
    every seed within +5% perplexity."""
    from pipeline.presets import params_text

    mod = _fresh("conflict_validation")
    cfg, _ = params_text(mod.PRESET, mod.validation_params([0, 1]))
    assert cfg.data.learn.options["test_split"] == "validation" and cfg.data.learn.n_test == 300
    forget = {t.key: t for t in cfg.data.forget}
    assert forget["sentiment"].options["test_split"] == "validation" and "test_split" not in forget["psychol"].options
    assert cfg.run.seeds == [0, 1] and cfg.run.methods == mod.METHODS and cfg.control.learn_options
    big, small = cfg.methods["lwf_oracle_large"], cfg.methods["lwf_oracle"]
    assert (small.unlearn_lr, big.unlearn_lr) == (0.01, 0.03) and {**big.model_dump(), "unlearn_lr": 0.01} == small.model_dump()

    def summary(steps, ppl):
        run = {"unlearn_steps_taken": steps, "unlearn_steps_scheduled": [15] * len(steps), "perplexity": ppl}
        return {"vanilla": {"perplexity": 10.0}, "lwf_oracle": {**run, "unlearn_steps_taken": [15, 15], "perplexity": 10.2},
                "lwf_oracle_large": run}
    assert mod.pick_step(summary([15, 14], 10.4)) == (0.03, {0.01: True, 0.03: True})
    assert mod.pick_step(summary([15, 13], 10.4))[0] == 0.01  # 13 of 15 < 90% in one seed
    assert mod.pick_step(summary([15, 15], 10.6))[0] == 0.01  # +6% perplexity
    timing, _ = params_text(mod.PRESET, mod.validation_params([0], preset_methods=True))  # the preset on validation
    preset, _ = params_text(mod.PRESET, None)
    assert timing.run.seeds == [0] and timing.run.methods == preset.run.methods and "lwf_oracle_large" not in timing.methods
    assert timing.data.learn.options["test_split"] == "validation" and timing.finetune == preset.finetune


def test_merge_seeds_adds_the_second_projects_seeds_and_refuses_other_params(tmp_path):
    """Two projects of equal params but seeds: the first ends with every seed's evaluation entry and
    training log and the union of the seeds in its params.yaml; params that differ elsewhere, seeds
    that overlap or a shared stage's output that differs are refused."""
    import json

    import yaml

    mod = _fresh("merge_seeds")

    def project(name, seeds, lr=0.001, fisher_md5="f1", n=3):
        p = tmp_path / name
        (p / "artifacts/eval").mkdir(parents=True)
        p.joinpath("params.yaml").write_text(f"run:\n  seeds: {seeds}           # comment\n  methods: [vanilla]\n"
                                             f"finetune: {{lr: {lr}}}\n")
        (p / "metrics").mkdir()
        p.joinpath("metrics/fisher.json").write_text(json.dumps({"n": n, "seconds": len(name)}))
        lock = {"stages": {"fisher": {"outs": [{"path": "artifacts/fisher.pt", "md5": fisher_md5},
                                               {"path": "metrics/fisher.json", "md5": name}]},
                           "finetune@vanilla": {"outs": [{"path": "artifacts/models/vanilla", "md5": name}]}}}
        p.joinpath("dvc.lock").write_text(yaml.safe_dump(lock))
        p.joinpath("artifacts/eval/vanilla.json").write_text(json.dumps(
            {"method": "vanilla", "seeds": {str(s): {"learn_score": s / 10} for s in seeds}}))
        for s in seeds:
            (p / "logs/train/vanilla").mkdir(parents=True, exist_ok=True)
            (p / "logs/train/vanilla" / f"seed{s}.csv").write_text(f"event,step\n{s},1\n")
        return p

    a, b = project("a", [0, 1, 2]), project("bb", [3, 4])  # metrics differ only in their seconds
    for bad in (project("c", [2, 3]), project("d", [3, 4], lr=0.002), project("e", [3, 4], fisher_md5="f2"),
                project("f", [3, 4], n=4)):
        with pytest.raises(ValueError):
            mod.check(a, bad)
    assert mod.merge(a, b) == [0, 1, 2, 3, 4]
    ev = json.loads((a / "artifacts/eval/vanilla.json").read_text())
    assert sorted(ev["seeds"]) == ["0", "1", "2", "3", "4"] and ev["seeds"]["4"]["learn_score"] == 0.4
    assert (a / "logs/train/vanilla/seed4.csv").read_text() == "event,step\n4,1\n"
    assert yaml.safe_load((a / "params.yaml").read_text())["run"]["seeds"] == [0, 1, 2, 3, 4]
    assert "# comment" in (a / "params.yaml").read_text()


def test_conflict_test_reads_the_length_baseline_from_the_confidence_table(tmp_path):
    """A run whose metrics lack the n_tokens AUROC gets it from its confidence table: sentiment
    answers longer than psychology's but one (2 tokens, above only 1) -> 7 of 9 pairs ordered."""
    mod = _fresh("conflict_test")
    (tmp_path / "artifacts").mkdir()
    pd.DataFrame({"forget_task": ["sentiment"] * 3 + ["psychol"] * 3 + ["other"],
                  "n_tokens": [30, 31, 2, 5, 6, 1, 99]}).to_parquet(tmp_path / "artifacts/confidence.parquet")
    conf = {"auroc_positive": ["sentiment"], "auroc_negative": ["psychol"]}
    assert mod.length_auroc(tmp_path, conf) == pytest.approx(7 / 9)


def test_conflict_test_credits_each_stage_timer_to_the_stage_dvc_ran():
    """The test run's time table: each 'stage NAME: done in S s' line belongs to the stage DVC
    announced last (finetune@lwf, not finetune), and /usr/bin/time's wall clock is read with and
    without hours."""
    mod = _fresh("conflict_test")
    log = """Running stage 'prepare':
> python -m stages.prepare
lwf INFO stage prepare: done in 1.5s
Running stage 'finetune@vanilla':
lwf INFO stage finetune: done in 100.0s
Running stage 'finetune@lwf':
lwf INFO stage finetune: something else: done in 5.0s (not a timer)
lwf INFO stage finetune: done in 150.5s
"""
    assert mod.stage_timers(log) == {"prepare": 1.5, "finetune@vanilla": 100.0, "finetune@lwf": 150.5}
    assert mod.wall_seconds("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.50\n") == 3723.5
    assert mod.wall_seconds("\tElapsed (wall clock) time (h:mm:ss or m:ss): 57:28.99\n") == pytest.approx(3448.99)
    assert mod.wall_seconds("no report") is None
    timers = {"prepare": 10.0, "finetune@base": 1.0, "evaluate@base": 30.0, "finetune@vanilla": 100.0,
              "evaluate@vanilla": 50.0, "finetune_control": 80.0}
    assert "Projected for 5 seeds from these 1: 1500 s" in mod.projection(timers, 580.0, 1, 5)  # 580 + 230 * 4


NOT_RUN = {  # study scripts whose cheapest real path is a whole pipeline run or the real model: too slow here
    "lab_robustness": "a full `dvc repro` per lab seed",
    "objective_frontier": "a 1000-step lab pretraining and the confidence stage per lab seed before any fine-tune (~4 min)",
    "lab_confidence": "`dvc repro confidence` per lab seed and Fisher site",
    "optimum_budget": "runs on the projects lab_confidence.py made",
    "real_confidence": "SmolLM2-135M through the confidence stage (~8 min)",
    "learning_curve": "SmolLM2-135M fine-tunes of 150 steps scored on SST-5 validation (~8 min a seed)",
    "objective_frontier_real": "36+ SmolLM2-135M fine-tunes in a finished `dvc repro` of the powered preset (~1 h)",
    "published_confidence": "a project after `dvc repro confidence` (the lab pretraining first), then theta*_L per grid point",
}


def test_every_study_has_a_readme_and_every_script_is_run_or_excused():
    """Each experiments/<study>/ has a README naming its scripts, the confidence score and the
    objective its figures used; each script has a docstring and a run here or in test_e2e.py, or a
    reason in NOT_RUN."""
    here = Path(__file__).read_text().split("NOT_RUN = {")[0] + (Path(__file__).parent / "test_e2e.py").read_text()
    here += "".join(Path(__file__).read_text().partition("def test_unlearn_step_")[1:])
    scripts = [*EXP.glob("*.py"), *EXP.glob("*/*.py")]
    assert len(STUDIES) >= 6 and len(scripts) >= 12
    for study in STUDIES:
        readme = (study / "README.md").read_text()
        for word in ("score", "objective", "python "):
            assert word in readme, f"{study.name}/README.md does not name the {word.strip()}"
        for p in study.glob("*.py"):
            assert p.name in readme, f"{study.name}/README.md does not name {p.name}"
    for p in scripts:
        if p.stem != "_common":
            assert f'"{p.stem}"' in here or p.stem in NOT_RUN, f"{p.relative_to(ROOT)}: run by no test and not in NOT_RUN"
            assert _fresh(p.stem).__doc__


def test_unlearn_step_on_a_random_model(capsys, monkeypatch, tmp_path):
    mod = _fresh("unlearn_step")
    monkeypatch.setattr(mod, "N", 2)
    mod.main(str(tmp_path))  # no artifacts/base_model there: the randomly initialised lab model
    rows = _table(capsys.readouterr().out, "One unlearning step after 2 learning steps")
    assert len(rows) == 9
    for r in rows:  # the separate and shared steps ascend: D_U NLL rises
        if r[0] != "joint":
            assert float(r[4]) > 0, r


def test_lab_studies_refuse_the_score_they_cannot_compute():
    """Their base models have no optimum stage: optimum_distance would rank by NaN."""
    from experiments._common import lab_confidence_table

    with pytest.raises(SystemExit, match="optimum_distance needs theta"):
        lab_confidence_table(None, None, None, [], "optimum_distance")


def test_auroc_ci_sides():
    from experiments._common import auroc_ci

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"forget_task": ["pos"] * 50 + ["neg"] * 50 + ["other"] * 10,
                       "score_perfect": np.r_[np.arange(50) + 100.0, np.arange(50), np.zeros(10)],
                       "score_noise": rng.random(110), "grad_norm": np.r_[np.zeros(50), np.ones(60)]})
    ci = auroc_ci(df, ["pos"], ["neg"], n_boot=200)
    assert ci["perfect"] == (1.0, 1.0, 1.0)
    assert ci["grad_norm"] == (0.0, 0.0, 0.0)
    m, lo, hi = ci["noise"]
    assert lo < 0.5 < hi and lo < m < hi


def test_unlearning_curve_rows(tmp_path):
    """Per unlearning step: the mean D_U NLL it ascended, and the next learning loss minus vanilla's."""
    from lab_robustness import unlearning_curve_rows

    def log(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["event", "step", "kind", "loss", "lr"]).to_csv(path, index=False)

    for proj, bump in (("a", 0.2), ("b", 0.4)):
        learn = [(i, i + 1, "learn", 1.0, 0.1) for i in range(6)]
        log(tmp_path / proj / "logs/train/vanilla/seed0.csv", learn)
        oracle = learn[:2] + [(9, 2, "unlearn", 0.3 if proj == "a" else 0.5, 0.1),
                              (2, 3, "learn", 1.0 + bump, 0.1)] + learn[3:]
        log(tmp_path / proj / "logs/train/lwf_oracle/seed0.csv", oracle)
    rows = unlearning_curve_rows([tmp_path / "a", tmp_path / "b"], [0], methods=("lwf_oracle",))
    assert rows == [[1, 2, "0.40", "+0.300"]]


def test_log_to_keeps_the_printout_and_leaves_no_partial_record(tmp_path, capsys):
    """A study's --log: what was printed, written when the block ends; a failed run keeps the old record."""
    from experiments._common import log_to

    log = tmp_path / "out" / "study.md.log"
    with log_to(str(log)):
        print("| a | 1 |")
    assert log.read_text() == "| a | 1 |\n" and capsys.readouterr().out == "| a | 1 |\n"
    with pytest.raises(RuntimeError), log_to(str(log)):
        print("| b | 2 |")
        raise RuntimeError("the run failed")
    assert log.read_text() == "| a | 1 |\n" and sys.stdout is not None


def _lab_result(oracle_nll, control_nll, taken, share, oracle_ppl=1.0):
    """A lab_robustness result with what ground_truth reads: 2 fine-tuning seeds, 3 test items."""
    def method(nll, ppl=1.0, delta=0.0, steps=(0, 0)):
        return {"nll": {"self/lab_conflict": nll}, "perplexity": ppl, "learn_score_delta": delta,
                "learn_score_delta_ci95": [delta - 0.1, delta + 0.1], "unlearn_steps_taken": list(steps),
                "unlearn_steps_scheduled": [5, 5]}
    summ = {"vanilla": method(0.5), "lwf": method(0.6, delta=-0.05, steps=taken),
            "vanilla_matched": method(0.5, delta=0.1), "lwf_oracle": method(oracle_nll, oracle_ppl),
            "control": method(control_nll, delta=0.3)}
    items = {"vanilla_matched": [1, 1, 0], "lwf": [1, 0, 0]}
    return {"summary": summ, "seeds": [0, 1],
            "confidence": {"positive_share_of_selection": {"high": share, "random": 0.3}},
            "params": {"confidence": {"score": "cosine", "auroc_positive": ["lab_conflict"]},
                       "methods": {"lwf": {"unlearn": "periodic", "selection": "high"}}},
            "evals": {m: {"seeds": {str(k): {"items": {"learn": v}} for k in (0, 1)}} for m, v in items.items()}}


def test_ground_truth_checks_each_component_against_what_the_lab_knows():
    """Selection (AUROC >= 0.90, conflicting share of D_U >= 0.8), action (every scheduled step),
    removal (the oracle's conflicting NLL at or above the control's; perplexity within +5%): each
    check passes and fails on its own figure, and lwf − vanilla_matched is paired per item."""
    from lab_robustness import GROUND_TRUTH, ground_truth

    row, checks = ground_truth(_lab_result(1.2, 1.0, (5, 5), 0.9), (0.95, 0.9, 1.0))
    assert list(checks) == list(GROUND_TRUTH) and all(checks.values())
    assert row[:6] == ["cosine", "0.950 [0.90, 1.00]", "0.90", "10 / 10", "0.500 / 1.200 / 1.000", "+0.0%"]
    assert row[7].startswith("-0.333 ")  # lwf − vanilla_matched: items (1,0,0) − (1,1,0) on both seeds
    _, checks = ground_truth(_lab_result(0.9, 1.0, (5, 4), 0.7, oracle_ppl=1.06), (0.89, 0.8, 0.95))
    assert not any(checks.values())
    summ = _lab_result(1.2, 1.0, (5, 5), 0.9)
    del summ["summary"]["control"]
    row, checks = ground_truth(summ, (0.95, 0.9, 1.0))
    assert checks[GROUND_TRUTH[3]] is None and row[4].endswith("/ —") and row[-1] == "—"


def test_prepared_rows_are_the_rows_the_prepare_stage_writes(tmp_path, monkeypatch):
    """The studies draw the prepare stage's rows through pipeline.tasks.prepared_rows, the function
    the stage itself calls: the same rows for every dataset and split."""
    from pipeline import paths
    from pipeline.config import parse_config
    from pipeline.stage import load_rows
    from pipeline.tasks import SPLITS, prepared_rows, prepared_sets
    from stages import prepare

    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"data": {"learn": {"task": "lab_learn", "n_train": 5, "n_test": 4},
                                 "forget": [{"task": "lab_conflict", "n_train": 3, "n_test": 2},
                                            {"task": "lab_neutral", "n_train": 3, "n_test": 2},
                                            {"task": "lab_count", "n_train": 2, "n_test": 2}],
                                 "general": {"task": "lab_general", "n_train": 1, "n_test": 3}}})
    prepare.run(cfg)
    where = {"learn": paths.LEARN_DATA, "general": paths.GENERAL_DATA}
    for kind, ref, seed in prepared_sets(cfg.data):
        for split in SPLITS:
            written = load_rows(where.get(kind, paths.FORGET_DATA / ref.task), split)
            assert [(r["prompt"], r["target"]) for r in written] == \
                [(r["prompt"], r["target"]) for r in prepared_rows(ref, seed, split)], (kind, ref.task, split)


def test_negative_transfer_pairs_the_runs_row_by_row(capsys, tmp_path):
    """control - conflict per step, paired over seeds and rows: a control one row better in every seed
    reads +6/20 with an interval above 0 in 3 of 3 seeds; runs over other rows are refused."""
    import json

    def run(name, extra):  # 3 seeds x 20 rows; `extra` rows of the last 10 answered right too
        items = {"0": [[1.0] * 10 + [0.0] * 10] * 3, "150": [[1.0] * (10 + extra) + [0.0] * (10 - extra)] * 3}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"items": items, "n_val": 20, "n_train": 8, "lr": 1e-3, "lr_schedule": "cosine",
                                    "trainable": "x", "scoring": "loglik", "labels": [name] * 5}))
        return str(path)

    mod = _fresh("negative_transfer")
    mod.main(["--conflict", run("conflict", 0), "--control", run("control", 6), "--n-boot", "200"])
    rows = _table(capsys.readouterr().out, "vanilla on SST-5 validation (20 rows), 3 seeds")
    assert [r[0] for r in rows] == ["0", "150"]
    assert rows[0][3].startswith("+0.000") and "(noise)" in rows[0][3] and rows[0][4] == "0 of 3"
    assert rows[1][3].startswith("+0.300 [+0.") and "(noise)" not in rows[1][3] and rows[1][4] == "3 of 3"
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**json.loads(Path(run("other", 0)).read_text()), "items": {"0": [[1.0] * 5] * 3}}))
    with pytest.raises(SystemExit, match="differ in seeds or rows"):
        mod.main(["--conflict", run("conflict", 0), "--control", str(short)])
