"""The pipeline is model- and task-agnostic: every stage, in process, on a tiny GPT-2-style model
(saved by the test with save_pretrained, loaded through model.name as a local path) with the
learning and forgetting tasks read from fixture files in the real datasets' schemas."""
import pandas as pd
import pytest
import torch

from pipeline.config import parse_config
from pipeline.io import read_json


@pytest.mark.slow  # every stage in process: about 13 s on 2 cores
def test_all_stages_on_gpt2_and_fixture_tasks(gpt2_dir, tmp_path, monkeypatch, fixture_files):
    files = fixture_files
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

    cfg = parse_config({
        "run": {"seeds": [0, 1], "methods": ["vanilla", "lwf", "lwf_early", "bss"]},
        "model": {"name": str(gpt2_dir)},
        "data": {"learn": {"task": "gsm8k", "n_train": 6, "n_test": 6, "options": files("gsm8k.jsonl")},
                 "forget": [{"task": "qasc", "n_train": 3, "n_test": 3, "options": {**files("qasc.jsonl"), "scoring": "loglik"}},
                            {"task": "sst5", "n_train": 5, "n_test": 5, "options": files("sst5.jsonl")}],
                 "general": {"task": "custom", "n_test": 5, "options": {**files("sst5.jsonl"), "prompt_field": "text",
                                                                        "target_field": "label_text", "metric": "none"}},
                 "max_length": 384},
        "fisher": {"n_samples": 6},
        "elicit": {"max_new_tokens": 6},
        "confidence": {"forget_fraction": 0.5, "per_task": True, "auroc_positive": [], "auroc_negative": []},
        "finetune": {"max_steps": 4, "batch_size": 2},
        "methods": {"vanilla": {}, "bss": {"bss": True},
                    "lwf": {"unlearn": "periodic", "unlearn_every": 2, "unlearn_batch_size": 2},
                    "lwf_early": {"unlearn": "early", "unlearn_every": 2, "unlearn_batch_size": 2}},
        "evaluate": {"max_new_tokens": 6},
        "report": {"bootstrap": 50},
    })
    monkeypatch.chdir(tmp_path)
    stages.prepare.run(cfg)
    stages.base_model.run(cfg)
    stages.optimum.run(cfg)
    stages.fisher.run(cfg)
    stages.elicit.run(cfg)
    stages.confidence.run(cfg)
    stages.control_model.run(cfg)  # not the lab: the control's three stages record that they were skipped
    for m in [*cfg.run.methods, "control"]:
        for s in cfg.run.seeds:
            stages.finetune.run(cfg, method=m, seed=s)
        stages.evaluate.run(cfg, method=m)
    stages.report.run(cfg)

    assert (tmp_path / "artifacts/base_model/config.json").read_text().count('"gpt2"') == 1
    df = pd.read_parquet(tmp_path / "artifacts/confidence.parquet")
    assert len(df) == 8 and df.groupby("forget_task")["selected"].sum().to_dict() == {"qasc": 2, "sst5": 2}
    summary = read_json(tmp_path / "metrics/summary.json")
    assert set(summary) == {"vanilla", "lwf", "lwf_early", "bss"}
    assert all(0 <= r["learn_score"] <= 1 and r["perplexity"] > 1 for r in summary.values())
    assert summary["lwf_early"]["unlearn_steps_taken"] == [2, 2]
    for f in ("metrics/control_model.json", "artifacts/control_base_model/skipped.json",
              "artifacts/models/control/seed1/skipped.json", "artifacts/eval/control.json"):
        assert read_json(tmp_path / f)["skipped"] == "the control needs model.name: lab or control.learn_options", f
    ev = read_json(tmp_path / "artifacts/eval/lwf.json")
    assert set(ev["seeds"]["0"]["forget_scores"]) == {"qasc", "sst5"}
    assert "flexible" in ev["seeds"]["0"]["learn_extra"]
    assert ev["seeds"]["0"]["scoring"] == {"learn/gsm8k": "generate", "forget/qasc": "loglik",
                                           "forget/sst5": "generate", "general/custom": "perplexity"}
    report = (tmp_path / "reports/report.md").read_text()
    assert "forget/qasc by log-likelihood ranking" in report and "forget/sst5 by greedy generation" in report


def test_lora_chat_template_and_gradient_checkpointing(tmp_path, monkeypatch, rows):
    """model.lora: Fisher and confidence over the adapters only, the fine-tune trains them and
    saves a merged plain model; model.chat_template wraps prompts; gradient checkpointing runs."""
    import stages.base_model
    import stages.confidence
    import stages.elicit
    import stages.evaluate
    import stages.finetune
    import stages.fisher
    import stages.optimum
    import stages.prepare
    from safetensors import safe_open

    from pipeline.data import encode
    from pipeline.models import load_model

    cfg = parse_config({
        "run": {"seeds": [0], "methods": ["vanilla", "lwf"]},
        "model": {"lab": {"pretrain_steps": 5}, "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]},
                  "gradient_checkpointing": True},
        "data": {"learn": {"task": "lab_learn", "n_train": 8, "n_test": 6},
                 "forget": [{"task": "lab_conflict", "n_train": 6, "n_test": 4}, {"task": "lab_count", "n_train": 6, "n_test": 4}],
                 "general": {"task": "lab_general", "n_test": 4}},
        "fisher": {"n_samples": 8}, "confidence": {"auroc_negative": ["lab_count"]},
        "finetune": {"max_steps": 2, "batch_size": 4},
        "methods": {"vanilla": {}, "lwf": {"unlearn": "periodic", "unlearn_every": 1, "unlearn_batch_size": 2}},
    })
    monkeypatch.chdir(tmp_path)
    for st in (stages.prepare, stages.base_model, stages.optimum, stages.fisher, stages.elicit, stages.confidence):
        st.run(cfg)
    with safe_open("artifacts/fisher.safetensors", "pt") as f:
        names = [k for k in f.keys() if k.startswith("fisher.")]
    assert names and all("lora_" in n for n in names)
    seen = []  # the model the fine-tune trains: checkpointing on, and its checkpoint function called

    def spy(run, *a, **k):
        calls = []
        for mod in run.model.modules():
            if getattr(mod, "gradient_checkpointing", False):
                real = mod._gradient_checkpointing_func
                mod._gradient_checkpointing_func = lambda *x, _f=real, **y: calls.append(1) or _f(*x, **y)
        out = real_run(run, *a, **k)
        seen.append((len(calls), run.model.config.use_cache))
        return out

    real_run = stages.finetune.Finetune.run
    monkeypatch.setattr(stages.finetune.Finetune, "run", spy)
    stages.finetune.run(cfg, method="lwf", seed=0)
    n_calls, use_cache = seen[0]
    assert n_calls >= 2 * 2 and use_cache is False  # every block of every forward pass was checkpointed
    stages.evaluate.run(cfg, method="lwf")
    with safe_open("artifacts/models/lwf/seed0/model.safetensors", "pt") as f:
        assert not any("lora" in k for k in f.keys())  # merged into a plain model

    # chat template: the tokenizer's template wraps the prompt, and no extra BOS is added
    tok_dir = tmp_path / "chat"
    model, tok = load_model("artifacts/base_model", cfg.model)
    tok.chat_template = "{% for m in messages %}<s>[{{ m['content'] }}]{% endfor %}"
    tok.save_pretrained(tok_dir)
    model.save_pretrained(tok_dir)
    _, ctok = load_model(str(tok_dir), cfg.model.model_copy(update={"chat_template": True}))
    e = encode(ctok, "kete lives in", " rome", 64)
    assert ctok.decode(e.input_ids).startswith("<s>[kete lives in]")
    assert e.input_ids.count(ctok.bos_token_id) == 1


def test_trainable_subset_freezes_the_rest(tmp_path, monkeypatch):
    """model.trainable: Fisher has entries for the matching parameters only, and the fine-tune
    (learning and unlearning steps) changes exactly those; the others keep the base weights."""
    import stages.base_model
    import stages.confidence
    import stages.elicit
    import stages.finetune
    import stages.fisher
    import stages.optimum
    import stages.prepare
    from safetensors import safe_open
    from safetensors.torch import load_file

    cfg = parse_config({
        "run": {"seeds": [0], "methods": ["vanilla", "lwf"]},
        "model": {"lab": {"pretrain_steps": 5}, "trainable": r"layers\.1\.mlp\."},
        "data": {"learn": {"task": "lab_learn", "n_train": 8, "n_test": 6},
                 "forget": [{"task": "lab_conflict", "n_train": 6, "n_test": 4}, {"task": "lab_count", "n_train": 6, "n_test": 4}],
                 "general": {"task": "lab_general", "n_test": 4}},
        "fisher": {"n_samples": 8}, "confidence": {"auroc_negative": ["lab_count"], "probe": {"steps": 2}},
        "finetune": {"max_steps": 2, "batch_size": 4},
        "methods": {"vanilla": {}, "lwf": {"unlearn": "periodic", "unlearn_every": 1, "unlearn_batch_size": 2}},
    })
    monkeypatch.chdir(tmp_path)
    for st in (stages.prepare, stages.base_model, stages.optimum, stages.fisher, stages.elicit, stages.confidence):
        st.run(cfg)
    with safe_open("artifacts/fisher.safetensors", "pt") as f:
        names = sorted(k[len("fisher."):] for k in f.keys() if k.startswith("fisher."))
    assert names and all(".layers.1.mlp." in n for n in names)
    stages.finetune.run(cfg, method="lwf", seed=0)
    base = load_file("artifacts/base_model/model.safetensors")
    tuned = load_file("artifacts/models/lwf/seed0/model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and changed == {k for k in base if ".layers.1.mlp." in k}


def test_trainable_matching_nothing_is_an_error():
    from pipeline.models import trainable_model

    cfg = parse_config({"model": {"trainable": "no_such_param"}})
    with pytest.raises(ValueError, match="model.trainable='no_such_param' matches no parameter"):
        trainable_model(torch.nn.Linear(2, 2), cfg.model)
