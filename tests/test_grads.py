"""The per-sample-gradient engine: vectorised == loop == plain autograd, on several architectures."""
import pytest
import torch

from pipeline.data import collate, encode_rows, forward_loss
from pipeline.grads import iter_per_sample_grads, select_params


def _all(model, encs, pad, engine, chunk=5, regex=None):
    """Per-sample gradients of every sample, in input order (the engine yields chunks by index)."""
    out, order = {}, []
    for idx, g in iter_per_sample_grads(model, encs, pad, engine, chunk, regex):
        order.append(idx)
        for k, v in g.items():
            out.setdefault(k, []).append(v)
    inv = torch.argsort(torch.cat(order))
    assert torch.equal(torch.cat(order)[inv], torch.arange(len(encs)))  # every sample exactly once
    return {k: torch.cat(v)[inv] for k, v in out.items()}


def _close(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        scale = b[k].abs().max().clamp_min(1e-12)
        assert (a[k] - b[k]).abs().max() / scale < rtol, k


def test_vectorized_equals_loop_llama(tiny, rows):
    model, tok = tiny
    # rows of different lengths, so padding is exercised
    rows = rows + [{"prompt": "x", "target": " much longer target text here", "answer": ""}]
    encs = encode_rows(tok, rows, 48)
    _close(_all(model, encs, tok.pad_token_id, "vectorized"), _all(model, encs, tok.pad_token_id, "loop"))


def test_loop_equals_plain_backward(tiny, rows):
    model, tok = tiny
    encs = encode_rows(tok, rows[:3], 48)
    got = _all(model, encs, tok.pad_token_id, "loop")
    for i, e in enumerate(encs):
        model.zero_grad()
        loss, _ = forward_loss(model, collate([e], tok.pad_token_id))
        loss.sum().backward()
        for n, p in model.named_parameters():
            assert torch.allclose(got[n][i], p.grad, atol=1e-7)
    model.zero_grad()


def test_param_regex_restricts(tiny, rows):
    model, tok = tiny
    encs = encode_rows(tok, rows[:4], 48)
    g = _all(model, encs, tok.pad_token_id, "vectorized", regex=r"layers\.1\.mlp")
    assert set(g) == {n for n in select_params(model) if "layers.1.mlp" in n}
    with pytest.raises(ValueError, match="selects no"):
        select_params(model, "nothing-matches")


def test_vectorized_gpt2_and_tied_embeddings(rows):
    """GPT-2: Conv1D and LayerNorm go through the generic vmap path; wte is tied to lm_head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.models import build_byte_tokenizer

    tok = build_byte_tokenizer()
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                   tie_word_embeddings=True, attn_implementation="eager")).eval()
    encs = encode_rows(tok, rows[:6], 48)
    _close(_all(m, encs, tok.pad_token_id, "vectorized", chunk=4), _all(m, encs, tok.pad_token_id, "loop"))
