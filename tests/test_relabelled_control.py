"""The relabelled control (control.learn_options) on any model: the base model itself learns the
learning task's rows with other options (here SST-5 with label words it has no prior for), and its
learn score is measured on those rows, so `control - vanilla` is the negative transfer of what the
model knows about the learning task's own words."""
import pytest

from pipeline.config import parse_config
from pipeline.io import read_json
from pipeline.tasks.choice import SST5_LABELS

REVERSED = list(reversed(SST5_LABELS))
NONCE = ["dax", "wug", "fep", "blick", "toma"]


def relabelled_cfg(model_dir, files, **control):
    return parse_config({
        "run": {"seeds": [0], "methods": ["vanilla"]},
        "model": {"name": str(model_dir)},
        "data": {"learn": {"task": "sst5", "n_train": 5, "n_test": 5,
                           "options": {**files("sst5.jsonl"), "labels": REVERSED, "scoring": "loglik"}},
                 "forget": [{"task": "sst5", "n_train": 3, "n_test": 3,
                             "options": {**files("sst5.jsonl"), "name": "sentiment", "scoring": "loglik"}}],
                 "general": {"task": "custom", "n_test": 3, "options": {**files("sst5.jsonl"), "prompt_field": "text",
                                                                        "target_field": "label_text", "metric": "none"}},
                 "max_length": 128},
        "optimum": {"steps": 5, "n_validation": 0},
        "fisher": {"n_samples": 4},
        "elicit": {"max_new_tokens": 4},
        "confidence": {"auroc_positive": ["sentiment"], "auroc_negative": []},
        "finetune": {"max_steps": 3, "batch_size": 2, "warmup_steps": 0},
        "evaluate": {"max_new_tokens": 4},
        "report": {"bootstrap": 20},
        "control": control,
    })


@pytest.mark.slow  # every stage in process on a tiny GPT-2: about 10 s on 2 cores
def test_the_relabelled_control_learns_the_same_rows_with_its_own_words(gpt2_dir, tmp_path, monkeypatch, fixture_files):
    import pandas as pd
    from datasets import load_from_disk

    import stages.base_model
    import stages.confidence
    import stages.control_model
    import stages.elicit
    import stages.evaluate
    import stages.finetune
    import stages.fisher
    import stages.optimum
    import stages.prepare
    import stages.report

    cfg = relabelled_cfg(gpt2_dir, fixture_files, learn_options={"labels": NONCE})
    monkeypatch.chdir(tmp_path)
    for stage in (stages.prepare, stages.base_model, stages.optimum, stages.fisher, stages.elicit, stages.confidence,
                  stages.control_model):
        stage.run(cfg)
    learn, control = load_from_disk("data/learn"), load_from_disk("data/learn_control")
    for split in ("train", "test"):  # the same reviews in the same order, each class in the control's word
        a, b = learn[split].to_list(), control[split].to_list()
        assert [r["prompt"].split("\n")[0] for r in a] == [r["prompt"].split("\n")[0] for r in b]
        assert [REVERSED.index(r["answer"]) for r in a] == [NONCE.index(r["answer"]) for r in b]
        assert all(r["choices"] == NONCE and "Sentiment (dax, wug, fep, blick, toma):" in r["prompt"] for r in b)
    base = tmp_path / "artifacts/base_model/model.safetensors"
    assert (tmp_path / "artifacts/control_base_model/model.safetensors").read_bytes() == base.read_bytes()

    for method in ("vanilla", "control"):
        stages.finetune.run(cfg, method=method)
        stages.evaluate.run(cfg, method=method)
    stages.report.run(cfg)
    weights = {m: (tmp_path / f"artifacts/models/{m}/seed0/model.safetensors").read_bytes() for m in ("vanilla", "control")}
    assert weights["control"] != weights["vanilla"] != base.read_bytes()  # same base and seed, other targets
    gens = pd.read_parquet(tmp_path / "artifacts/eval/control.generations.parquet")
    learned = gens[gens.split == "learn"]
    assert len(learned) == 5 and set(learned.answer) <= set(NONCE)
    vanilla_gens = pd.read_parquet(tmp_path / "artifacts/eval/vanilla.generations.parquet")
    assert set(vanilla_gens[vanilla_gens.split == "learn"].answer) <= set(REVERSED)
    summary = read_json(tmp_path / "metrics/summary.json")
    ev = read_json(tmp_path / "artifacts/eval/control.json")["seeds"]["0"]
    assert summary["control"]["learn_score"] == pytest.approx(ev["learn_score"])
    assert "control.learn_options" in (tmp_path / "reports/report.md").read_text()


def test_the_control_runs_on_any_model_only_with_learn_options(tmp_path, fixture_files):
    from pipeline.config import control_learn, control_skipped

    cfg = relabelled_cfg(tmp_path, fixture_files)
    assert control_skipped(cfg) == "the control needs model.name: lab or control.learn_options"
    assert control_learn(cfg) is None
    cfg = relabelled_cfg(tmp_path, fixture_files, learn_options={"labels": NONCE})
    assert control_skipped(cfg) is None
    assert control_learn(cfg).options == {**cfg.data.learn.options, "labels": NONCE}
    assert control_learn(cfg).n_train == cfg.data.learn.n_train
    assert control_skipped(relabelled_cfg(tmp_path, fixture_files, enabled=False, learn_options={"x": 1})) \
        == "control.enabled is false"
    with pytest.raises(ValueError, match="control.learn_options"):
        relabelled_cfg(tmp_path, fixture_files, learn_options={})


@pytest.mark.slow  # the pipeline's stages twice in process on a tiny Llama: about 20 s on 2 cores
def test_the_relabelled_control_reads_the_prefix_stores_and_scores_as_without_them(tmp_path, monkeypatch,
                                                                                  fixture_files):
    """Its base model is the base model, so prefix_train / prefix_eval hold its rows too: its
    fine-tune and evaluation run only the top blocks (no row misses the stores) and score what
    the plain path scores."""
    import torch

    import stages.base_model
    import stages.confidence
    import stages.control_model
    import stages.elicit
    import stages.evaluate
    import stages.finetune
    import stages.fisher
    import stages.optimum
    import stages.prefix
    import stages.prepare
    from pipeline.config import LabConfig
    from pipeline.models import build_byte_tokenizer, tiny_llama

    tok = build_byte_tokenizer()
    torch.manual_seed(0)
    llama = tiny_llama(len(tok), LabConfig(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64), max_len=512)
    model_dir = tmp_path / "tiny-llama"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = {}
    for cached in (False, True):
        cfg = relabelled_cfg(model_dir, fixture_files, learn_options={"labels": NONCE})
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "trainable": r"model\.layers\.(2|3)\.|model\.norm\.", "prefix_cache": cached})})
        work = tmp_path / ("cached" if cached else "plain")
        work.mkdir()
        monkeypatch.chdir(work)
        for stage in (stages.prepare, stages.base_model, stages.elicit):
            stage.run(cfg)
        for part in ("train", "eval"):
            stages.prefix.run(cfg, part=part)
        for stage in (stages.optimum, stages.fisher, stages.confidence, stages.control_model):
            stage.run(cfg)
        stages.finetune.run(cfg, method="control")
        stages.evaluate.run(cfg, method="control")
        out[cached] = read_json(work / "artifacts/eval/control.json")["seeds"]["0"]
    plain, cached = out[False], out[True]
    assert cached["train"]["prefix_cache"]["misses"] == 0 and cached["train"]["prefix_cache"]["hits"] > 0
    assert cached["prefix_cache"]["misses"] == 0 and cached["prefix_cache"]["hits"] > 0
    assert "prefix_cache" not in plain
    assert cached["learn_score"] == pytest.approx(plain["learn_score"], abs=1e-9)  # accuracy over the same 5 rows
    assert cached["items"]["learn"] == plain["items"]["learn"]
    assert cached["nll"] == pytest.approx(plain["nll"], rel=1e-4)
    assert cached["perplexity"] == pytest.approx(plain["perplexity"], rel=1e-4)
