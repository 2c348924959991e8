"""Data edge cases: empty and cut generations, duplicate prompts, non-ASCII text, tiny sets."""
import copy
from pathlib import Path

import pytest

from pipeline.config import FinetuneConfig, MethodConfig
from pipeline.confidence import confidence_scores
from pipeline.data import encode
from pipeline.generation import generate
from pipeline.fisher import fisher_and_mean_grad
from pipeline.io import atomic_path
from pipeline.train import finetune


def test_generation_cut_at_max_tokens_duplicates_and_order(tiny):
    model, tok = tiny
    prompts = ["b", "a much longer prompt", "b", "café → 東京 lives in"]
    out = generate(model, tok, prompts, max_new_tokens=3, batch_size=2)
    assert len(out) == 4
    assert all(g["n_tokens"] <= 3 for g in out)
    assert all(g["truncated"] == (g["n_tokens"] == 3) for g in out)
    assert out[0] == out[2]  # duplicate prompts, same greedy answer, order kept
    one = generate(model, tok, [prompts[1]], max_new_tokens=3)
    assert one[0] == out[1]  # batching and padding do not change the answer


def test_generation_is_cut_before_the_first_stop_string(scripted, tiny):
    text = " 3 + 5 = 8 dollars.\nQuestion: How much is 1 + 1?"
    model = scripted(text)
    full, cut = (generate(model, tiny[1], ["Question: 3 + 5?\nAnswer:"], max_new_tokens=64, stop=s)[0]
                 for s in ((), ("\n\n", "Question:")))
    assert full["response"] == text and full["truncated"]
    k = len(" 3 + 5 = 8 dollars.\nQuestion:")  # one token per byte: the tokens through the stop string
    assert cut == {"response": " 3 + 5 = 8 dollars.\n", "n_tokens": k, "truncated": False,
                   "mean_logprob": pytest.approx(sum(model.logprobs()[:k]) / k)}
    short = generate(model, tiny[1], ["Q"], max_new_tokens=5, stop=("Question:",))[0]
    assert short["response"] == text[:5] and short["truncated"]  # cut at max_new_tokens before any stop


def test_empty_response_and_truncated_response_are_scored(tiny, rows):
    model, tok = tiny
    F, gL = fisher_and_mean_grad(model, tok, rows[:4], 64)
    samples = [{"prompt": "kete lives in", "target": ""},                     # empty generation: EOS only
               {"prompt": "kete lives in", "target": " ro", "add_eos": False},  # cut at max tokens
               {"prompt": "Zürich → 東京", "target": " ok"}]                      # non-ASCII
    from pipeline.config import ProbeConfig

    from pipeline.config import OptimumConfig
    from pipeline.optimum import optimum_delta

    delta, _, _ = optimum_delta(copy.deepcopy(model), tok, rows[:4], OptimumConfig(steps=2, batch_size=2), 64, True,
                                list(F))
    df = confidence_scores(model, tok, samples, F, gL, 64, learn_rows=rows[:4], probe=ProbeConfig(steps=2, batch_size=2),
                           optimum=delta, alpha=3e-4)
    assert df.notna().all().all() and (df["score_fisher_distance"] > 0).all() and (df["score_optimum_distance"] > 0).all()
    e = encode(tok, "kete lives in", " ro", 64, add_eos=False)
    assert e.input_ids[-1] != tok.eos_token_id and sum(x != -100 for x in e.labels) == 3


def test_forgetting_set_smaller_than_batch(tiny, rows):
    model = copy.deepcopy(tiny[0])
    cfg = FinetuneConfig(max_steps=4, batch_size=4, warmup_steps=0)
    log, stats = finetune(model, tiny[1], rows, [{"prompt": "x", "target": " y"}, {"prompt": "z", "target": ""}],
                          cfg, MethodConfig(unlearn="periodic", unlearn_every=2, unlearn_batch_size=16), 0, 64)
    assert stats["unlearn_steps_taken"] == 2 and stats["weights_finite"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert not target.exists() and not list(tmp_path.iterdir())
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_replaces_files_and_directories_without_a_gap(tmp_path, monkeypatch):
    """An existing file is replaced by one rename (never absent: the SIGKILL test hit the gap an
    unlink-then-rename left); an existing directory is moved aside, replaced, then removed."""
    import os

    import pipeline.io as io

    target = tmp_path / "ckpt.pt"
    target.write_text("old")
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append(Path(dst).name)
        assert target.read_text() == "old", "the old file must stay in place until the one rename"
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", spy)
    monkeypatch.setattr(io.Path, "unlink", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unlink used")))
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and calls == ["ckpt.pt"]
    monkeypatch.undo()

    d = tmp_path / "model"
    d.mkdir()
    (d / "a").write_text("old")
    with atomic_path(d, is_dir=True) as tmp:
        (tmp / "b").write_text("new")
    assert [p.name for p in d.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "model"]
