"""The frozen-prefix cache (model.prefix_cache, pipeline/prefix_cache.py) against the uncached
path on a tiny random Llama with 4 blocks, the top 2 trainable: same per-row losses, same
gradients, same weights after a fine-tune with unlearning steps; the bottom blocks stop running
once every row is memoised; every setting it cannot handle is refused in one sentence."""
import copy
import re

import pytest
import torch

from conftest import tiny_lab
from pipeline.config import ConfigError, FinetuneConfig, MethodConfig, parse_config
from pipeline.data import collate, encode_rows, forward_loss
from pipeline.models import trainable_model
from pipeline.prefix_cache import PrefixCacheError, disable_prefix_cache, enable_prefix_cache
from pipeline.tasks import get_task
from pipeline.train import finetune

TOP = r"model\.layers\.(2|3)\.|model\.norm\."
TOL = dict(rtol=1e-5, atol=1e-6)


def _model(trainable=TOP, **kw):
    torch.manual_seed(0)
    model, tok = tiny_lab(layers=4, **kw)
    model = trainable_model(model, parse_config({"model": {"trainable": trainable}}).model)
    return model, tok


def _batch(tok, rows):
    return collate(encode_rows(tok, rows, 64), tok.pad_token_id)


def _d_u():
    return get_task("lab_conflict").load("train", 8, 0, {})


def test_same_losses_and_gradients_as_the_uncached_forward(rows):
    model, tok = _model()
    batch = _batch(tok, rows[:6])
    ref_loss, _ = forward_loss(model, batch)
    ref_loss.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    state = enable_prefix_cache(model)
    assert state.cut == 2
    for rnd in range(2):  # first round fills the store, second is served from it
        loss, _ = forward_loss(model, batch)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        loss.sum().backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, ref_grads[n], **TOL, msg=f"round {rnd}: {n}")
            else:
                assert p.grad is None, n
        model.zero_grad(set_to_none=True)
    assert (state.misses, state.hits) == (6, 6)
    # a row padded differently (other batch, other length) is served from the store and keeps its loss
    mixed = _batch(tok, [rows[3], rows[8], rows[0]])
    torch.testing.assert_close(forward_loss(model, mixed)[0][[0, 2]], ref_loss[[3, 0]], **TOL)
    disable_prefix_cache(model)
    torch.testing.assert_close(forward_loss(model, mixed)[0][[0, 2]], ref_loss[[3, 0]], **TOL)


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("optimizer", ["separate", "joint"])
def test_same_weights_after_a_fine_tune_with_unlearning(rows, optimizer):
    cfg = FinetuneConfig(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=0, checkpoint_every=100)
    method = MethodConfig(unlearn="periodic", objective="npo", unlearn_every=2, unlearn_batch_size=4,
                          unlearn_optimizer=optimizer, unlearn_lr=0.05)
    plain, tok = _model()
    cached = copy.deepcopy(plain)
    state = enable_prefix_cache(cached)
    bottom, top = _count_calls(cached.model.layers[1]), _count_calls(cached.model.layers[2])
    log_a, stats_a = finetune(plain, tok, rows, _d_u(), cfg, method, seed=0, max_length=64)
    log_b, stats_b = finetune(cached, tok, rows, _d_u(), cfg, method, seed=0, max_length=64)
    assert stats_a["unlearn_steps_taken"] == stats_b["unlearn_steps_taken"] == 3
    key = lambda r: (r["event"], r["step"], r["kind"])  # noqa: E731
    assert list(map(key, log_a)) == list(map(key, log_b)) and len(log_a) == 9
    for a, b in zip(log_a, log_b):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), (a, b)
    sa, sb = plain.state_dict(), cached.state_dict()
    assert list(sa) == list(sb)  # the cache leaves the parameter names alone
    for n in sa:
        torch.testing.assert_close(sb[n], sa[n], rtol=1e-4, atol=1e-6, msg=n)
    # 12 learning rows (2 epochs of 6 batches of 4 -> each seen twice) and 8 D_U rows: each row ran
    # the frozen blocks once, and the later epoch never called them
    assert len(state.store) == state.misses <= 12 + 8 and state.hits > 0
    n_bottom, n_top = len(bottom), len(top)
    forward_loss(cached, _batch(tok, rows[:4]))
    assert len(bottom) == n_bottom and len(top) == n_top + 1


def test_bss_and_generation_fall_back_to_the_full_forward(rows):
    model, tok = _model()
    state = enable_prefix_cache(model)
    bottom = _count_calls(model.model.layers[0])
    batch = _batch(tok, rows[:2])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == 5 and len(bottom) == 1 and state.misses == 0
    model.generate(batch["input_ids"][:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert state.misses == 0


def test_refusals_name_the_setting(rows):
    model, tok = _model(trainable=r"model\.layers\.3\.|embed_tokens")
    with pytest.raises(PrefixCacheError, match="input embeddings"):
        enable_prefix_cache(model)
    model, _ = _model(trainable=r"lm_head")  # untied lm_head only: no block is trainable
    with pytest.raises(PrefixCacheError, match="none of the blocks"):
        enable_prefix_cache(model)
    model, _ = _model()
    model.config.attention_dropout = 0.1
    with pytest.raises(PrefixCacheError, match="attention_dropout"):
        enable_prefix_cache(model)
    model, _ = _model()
    enable_prefix_cache(model)
    batch = _batch(tok, rows[:2])
    left = {**batch, "attention_mask": batch["attention_mask"].clone()}
    left["attention_mask"][0, 0] = 0  # a padding position before real tokens
    with pytest.raises(PrefixCacheError, match="right-padded"):
        forward_loss(model, left)
    model, _ = _model()
    model.gradient_checkpointing_enable()
    with pytest.raises(PrefixCacheError, match="gradient_checkpointing"):
        enable_prefix_cache(model)
    pytest.importorskip("peft")
    from pipeline.config import LoraConfig
    from pipeline.models import with_lora

    with pytest.raises(PrefixCacheError, match="lora"):
        enable_prefix_cache(with_lora(tiny_lab(layers=4)[0], LoraConfig()))


@pytest.mark.parametrize("extra, needle", [
    ({}, "model.trainable"),
    ({"lora": {"r": 4}}, "model.lora"),
    ({"trainable": "layers", "gradient_checkpointing": True}, "model.gradient_checkpointing"),
])
def test_config_refuses_prefix_cache_without_its_conditions(extra, needle):
    with pytest.raises(ConfigError) as e:
        parse_config({"model": {"prefix_cache": True, **extra}})
    msg = str(e.value)
    assert "model.prefix_cache" in msg and needle in msg and "\n" not in msg
    assert re.search("fsdp", str(pytest.raises(ConfigError, parse_config, {
        "model": {"prefix_cache": True, "trainable": "layers"}, "launch": {"strategy": "fsdp"}}).value))


@pytest.mark.parametrize("engine", ["vectorized", "loop"])
def test_per_sample_gradients_through_the_cache(rows, engine):
    """Both per-sample-gradient engines (pipeline/grads.py) hook the layers of one batched forward, so
    through the cache they give the same per-sample gradients of the parameters above the cut."""
    from pipeline.grads import iter_per_sample_grads

    model, tok = _model()
    encs = encode_rows(tok, rows[:5], 64)
    regex = r"model\.layers\.3\.mlp\."

    def grads():
        out = {}
        for idx, g in iter_per_sample_grads(model, encs, tok.pad_token_id, engine, chunk_size=3, param_regex=regex):
            for n, v in g.items():
                out.setdefault(n, torch.zeros(len(encs), *v.shape[1:]))[idx] = v
        return out

    ref = grads()
    state = enable_prefix_cache(model)
    for _ in range(2):
        got = grads()
        assert set(got) == set(ref) and len(ref) == 3
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], **TOL, msg=n)
    assert state.misses == 5 and state.hits == 5


def test_a_saved_store_serves_another_process_model_and_refuses_other_frozen_weights(rows, tmp_path):
    """prefix@train / prefix@eval write the base model's states; a fine-tune or an evaluation of a model
    with the same frozen blocks loads them (no bottom forward at all), one with other frozen blocks or
    another cut is refused in one sentence."""
    from pipeline.prefix_cache import fingerprint, load_store, save_store

    base, tok = _model()
    batch = _batch(tok, rows[:6])
    state = enable_prefix_cache(base)
    forward_loss(base, batch)
    path = tmp_path / "train.pt"
    assert save_store(base, path) == 6

    tuned = copy.deepcopy(base)  # the top blocks change in a fine-tune; the frozen ones do not
    disable_prefix_cache(tuned)
    with torch.no_grad():
        tuned.model.layers[3].mlp.down_proj.weight.mul_(1.5)
    ref, _ = forward_loss(tuned, batch)
    s2 = enable_prefix_cache(tuned)
    assert load_store(tuned, path) == 6 and s2.loaded == 6
    bottom = _count_calls(tuned.model.layers[0])
    torch.testing.assert_close(forward_loss(tuned, batch)[0], ref, **TOL)
    assert (s2.hits, s2.misses, len(bottom)) == (6, 0, 0)
    assert fingerprint(tuned, 2) == fingerprint(base, state.cut)

    other = copy.deepcopy(tuned)  # one frozen weight changed by one ulp
    disable_prefix_cache(other)
    with torch.no_grad():
        w = other.model.layers[1].self_attn.q_proj.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1e9))
    enable_prefix_cache(other)
    with pytest.raises(PrefixCacheError, match="other frozen weights"):
        load_store(other, path)
    deeper, _ = _model(trainable=r"model\.layers\.3\.")  # cut 3, not 2
    enable_prefix_cache(deeper)
    with pytest.raises(PrefixCacheError, match="below block 2"):
        load_store(deeper, path)


def test_prefix_stage_placeholder_is_refused_by_name(tmp_path):
    from pipeline.prefix_cache import load_store, save_disabled

    model, _ = _model()
    enable_prefix_cache(model)
    save_disabled(tmp_path / "eval.pt")
    with pytest.raises(PrefixCacheError, match="prefix_cache off"):
        load_store(model, tmp_path / "eval.pt")
