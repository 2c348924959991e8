"""The paths that keep a real (large) vocabulary affordable give what the plain computation gives:
logits only at target positions, length-sorted chunks, embeddings left out of per-sample gradients
above a vocabulary size, grads.chunk_size auto from free memory, and generation that keeps only the
chosen tokens' log-probs."""
import logging
from pathlib import Path

import pytest
import torch

from pipeline.data import IGNORE, collate, encode_rows, forward_loss, per_sample_loss, target_positions
from pipeline.grads import (EMBEDDINGS_AUTO_MAX_VOCAB, iter_per_sample_grads, length_chunks, per_sample_bytes,
                            resolve_chunk_size, select_params)


def test_target_positions_pick_the_logits_that_predict_targets():
    lab = torch.tensor([[IGNORE, IGNORE, 5, 6, IGNORE], [IGNORE, 7, 8, 9, IGNORE], [IGNORE] * 5])
    pos, kept = target_positions(lab)
    assert pos.tolist()[:2] == [[1, 2, 0], [0, 1, 2]]
    assert kept.tolist() == [[5, 6, IGNORE], [7, 8, 9], [IGNORE] * 3]


def test_forward_loss_with_kept_logits_equals_full_logits(tiny, rows):
    model, tok = tiny
    rows = rows[:5] + [{"prompt": "a longer prompt here", "target": " t", "answer": ""}]
    batch = collate(encode_rows(tok, rows, 48), tok.pad_token_id)
    loss, out = forward_loss(model, batch)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = per_sample_loss(full, batch["labels"])
    assert out.logits.shape[1] < batch["input_ids"].shape[1]  # fewer positions than the sequence
    assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-6)


def test_length_chunks_sort_cap_and_cover():
    lengths = [93, 137, 114, 106, 107, 83, 92, 199, 102, 145, 107, 72, 83, 121, 67, 98]
    chunks = length_chunks(lengths, 8)
    assert sorted(i for c in chunks for i in c) == list(range(16))
    assert all(len(c) <= 8 for c in chunks)
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(lengths)
    assert all(len(c) * max(lengths[i] for i in c) <= 1.2 * sum(lengths[i] for i in c) for c in chunks)
    assert length_chunks([], 4) == []


def test_vectorized_yields_indices_and_matches_loop_in_input_order(tiny, rows):
    model, tok = tiny
    encs = encode_rows(tok, rows + [{"prompt": "x", "target": " a much longer target text", "answer": ""}], 48)
    got = {}
    for engine in ("vectorized", "loop"):
        out = {}
        for idx, g in iter_per_sample_grads(model, encs, tok.pad_token_id, engine, 4, r"layers\.1\."):
            for k, v in g.items():
                for j, i in enumerate(idx.tolist()):
                    out[(k, i)] = v[j]
        got[engine] = out
    assert got["vectorized"].keys() == got["loop"].keys()
    for key, v in got["loop"].items():
        assert torch.allclose(got["vectorized"][key], v, rtol=1e-5, atol=1e-7), key


def test_embeddings_auto_exclude_include(tiny, caplog, monkeypatch):
    model, _ = tiny
    emb = {n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight
           or p is model.get_output_embeddings().weight}
    assert emb and emb <= set(select_params(model))  # small vocabulary: auto keeps them
    assert emb <= set(select_params(model, embeddings="include"))
    assert not emb & set(select_params(model, embeddings="exclude"))
    import pipeline.grads as G

    monkeypatch.setattr(G, "EMBEDDINGS_AUTO_MAX_VOCAB", 8)
    monkeypatch.setattr(G, "_logged", set())
    with caplog.at_level(logging.INFO, logger="lwf"):
        auto = select_params(model)
        select_params(model)
    assert not emb & set(auto)
    msgs = [r.getMessage() for r in caplog.records if "grads.embeddings auto" in r.getMessage()]
    assert len(msgs) == 1 and "vocabulary" in msgs[0]  # logged once, with the reason
    with pytest.raises(ValueError, match="left out"):
        select_params(model, r"embed_tokens", "exclude")
    vocab = model.get_input_embeddings().weight.shape[0]  # the threshold: kept up to it, left out above it
    monkeypatch.setattr(G, "EMBEDDINGS_AUTO_MAX_VOCAB", vocab)
    assert emb <= set(select_params(model))
    monkeypatch.setattr(G, "EMBEDDINGS_AUTO_MAX_VOCAB", vocab - 1)
    assert not emb & set(select_params(model))
    assert vocab <= EMBEDDINGS_AUTO_MAX_VOCAB  # the shipped threshold keeps the lab's byte vocabulary

def test_fisher_without_embeddings_equals_fisher_restricted(tiny, rows):
    from pipeline.fisher import fisher_and_mean_grad

    model, tok = tiny
    F1, g1 = fisher_and_mean_grad(model, tok, rows[:6], 48, chunk_size=4, embeddings="exclude")
    F2, g2 = fisher_and_mean_grad(model, tok, rows[:6], 48, chunk_size=4)
    assert set(F1) < set(F2)
    for k in F1:
        assert torch.allclose(F1[k], F2[k], rtol=1e-5, atol=1e-12)


def test_chunk_size_auto(tiny, rows, caplog, monkeypatch):
    import pipeline.grads as G

    model, tok = tiny
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():  # the host's MemAvailable, read here independently (it moves a little meanwhile)
        avail = next(int(ln.split()[1]) * 1024 for ln in meminfo.read_text().splitlines() if ln.startswith("MemAvailable:"))
        assert abs(G.available_bytes("cpu") - avail) < 0.03 * avail
    encs = encode_rows(tok, rows, 48)
    params = select_params(model)
    each = per_sample_bytes(model, params, 48, 10)
    assert each > 32 * sum(p.numel() for p in params.values())
    monkeypatch.setattr(G, "_logged", set())
    monkeypatch.setattr(G, "available_bytes", lambda device: 2 * 3 * each + 1)
    with caplog.at_level(logging.INFO, logger="lwf"):
        n = resolve_chunk_size(model, params, encs, "auto")
    assert 1 <= n <= len(encs) and any("chunk_size auto" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(G, "available_bytes", lambda device: 1)
    assert resolve_chunk_size(model, params, encs, "auto") == 1
    assert resolve_chunk_size(model, params, encs, 7) == 7
    with pytest.raises(ValueError, match="grads.chunk_size"):
        resolve_chunk_size(model, params, encs, 0)
    monkeypatch.setattr(G, "available_bytes", lambda device: 10**12)
    got = [g for _, g in iter_per_sample_grads(model, encs, tok.pad_token_id, "vectorized", "auto")]
    assert sum(next(iter(g.values())).shape[0] for g in got) == len(encs)


def test_chunk_size_config_validation():
    from pipeline.config import GradsConfig

    assert GradsConfig(chunk_size="auto").chunk_size == "auto"
    assert GradsConfig(chunk_size=3).chunk_size == 3
    for bad in (0, -1, "big", 1.5):
        with pytest.raises(Exception, match="chunk_size"):
            GradsConfig(chunk_size=bad)
    with pytest.raises(Exception, match="embeddings"):
        GradsConfig(embeddings="sometimes")


def _full_logits_logprobs(model, tok, prompts, **kw):
    """The reference mean_logprob, one prompt at a time: every step's full logits (B x steps x V),
    log_softmax, gather."""
    from pipeline.data import prompt_ids

    eos = tok.eos_token_id
    out = []
    for p in prompts:
        ids = torch.tensor([prompt_ids(tok, p)])
        if kw.get("do_sample"):
            torch.manual_seed(kw.pop("_seed"))
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, output_logits=True,
                           return_dict_in_generate=True, eos_token_id=eos, pad_token_id=tok.pad_token_id, top_p=None,
                           **kw)
        new = g.sequences[:, ids.shape[1]:]
        lp = torch.stack(g.logits, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        for r in range(new.shape[0]):
            seq = new[r].tolist()
            c = seq.index(eos) + 1 if eos in seq else len(seq)
            out.append(float(lp[r, :c].mean()) if c else 0.0)
    return out


def test_generation_logprobs_equal_full_logits_path(tiny):
    from pipeline.generation import generate

    model, tok = tiny
    prompts = ["Q: 2+2", "Hello there, a longer prompt"]
    got = [r["mean_logprob"] for r in generate(model, tok, prompts, max_new_tokens=6, batch_size=1, progress=False)]
    ref = _full_logits_logprobs(model, tok, prompts, max_new_tokens=6, do_sample=False)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # sampling, 2 per prompt, temperature != 1: the recorder sees the logits before the temperature
    gens = generate(model, tok, prompts[:1], max_new_tokens=6, batch_size=1, do_sample=True, temperature=0.7,
                    num_return_sequences=2, seed=3, progress=False)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    ref = _full_logits_logprobs(model, tok, prompts[:1], max_new_tokens=6, do_sample=True, temperature=0.7, top_k=0,
                                 num_return_sequences=2, _seed=seed)
    assert [g["mean_logprob"] for g in gens] == pytest.approx(ref, rel=1e-5, abs=1e-6)
