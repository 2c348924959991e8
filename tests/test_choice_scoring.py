"""`loglik` scoring (pipeline/evaluate.py: choice_logliks) against a brute-force reference: one
full forward per option, the log-probabilities of its tokens summed. The project runs one forward
per *carrier* (an option rides on a longer sequence that starts with its own sequence minus the
last token) and computes logits only where an option token is predicted; both must give the same
numbers, with and without `logits_to_keep`, through the frozen-prefix cache too."""
import pytest
import torch

from conftest import tiny_lab
from pipeline.data import IGNORE, encode_rows
from pipeline.evaluate import choice_logliks, choice_scores, option_carriers
from pipeline.tasks import get_task

TASK = get_task("psychol", {"scoring": "loglik"})  # a ChoiceTask: continuations " " + option text
ROWS = [
    {"prompt": "Q: one?", "choices": ["a b", "a", "a c", "b"], "answer": "C"},  # all ride on " a b"
    {"prompt": "Question: which two", "choices": ["xy", "zw", "x", "xyz"], "answer": "A"},
    {"prompt": "Q3", "choices": ["very negative", "negative", "neutral", "positive", "very positive"],
     "answer": "E"},
]


def brute_force(model, tok, rows, task=TASK):
    out = []
    with torch.no_grad():
        for r in rows:
            lls = []
            for c in task.choice_continuations(r):
                e = encode_rows(tok, [{"prompt": r["prompt"], "target": c, "add_eos": False}], 10**9)[0]
                logp = model(input_ids=torch.tensor([e.input_ids])).logits[0].double().log_softmax(-1)
                lls.append(sum(float(logp[t - 1, e.input_ids[t]]) for t, lab in enumerate(e.labels) if lab != IGNORE))
            out.append(lls)
    return out


class NoKeep(torch.nn.Module):
    """The model behind a forward that does not take `logits_to_keep` (the full-logits path)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids=None, attention_mask=None, use_cache=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


@pytest.fixture(scope="module")
def model_tok():
    torch.manual_seed(0)
    return tiny_lab(layers=3)


@pytest.mark.parametrize("batch_size", [1, 2, 50])
@pytest.mark.parametrize("keep", [True, False], ids=["logits_to_keep", "full_logits"])
def test_logliks_equal_one_forward_per_option(model_tok, batch_size, keep):
    model, tok = model_tok
    ref = brute_force(model, tok, ROWS)
    got = choice_logliks(model if keep else NoKeep(model), tok, TASK, ROWS, batch_size=batch_size)
    assert [len(g) for g in got] == [len(r["choices"]) for r in ROWS]
    torch.testing.assert_close(torch.tensor([x for g in got for x in g], dtype=torch.float64),
                               torch.tensor([x for r in ref for x in r], dtype=torch.float64), rtol=1e-5, atol=1e-4)
    best = [max(range(len(r)), key=r.__getitem__) for r in ref]
    assert choice_scores(model, tok, TASK, ROWS, 2) == [float(b == "ABCDE".index(r["answer"])) for b, r in zip(best, ROWS)]


def test_carriers_share_forwards_only_where_the_prefix_matches(model_tok):
    _, tok = model_tok
    enc = lambda r: encode_rows(tok, [{"prompt": r["prompt"], "target": c, "add_eos": False}  # noqa: E731
                                      for c in TASK.choice_continuations(r)], 10**9)
    # " a b" carries " a", " a c", " b": each one's sequence minus its last byte starts " a b"'s
    assert set(option_carriers(enc(ROWS[0])).values()) == {0}
    # " xyz" carries " xy", " x"; " zw" needs its own forward
    assert option_carriers(enc(ROWS[1])) == {3: 3, 0: 3, 2: 3, 1: 1}


def test_counts_one_forward_per_carrier(model_tok):
    model, tok = model_tok
    calls = []
    handle = model.register_forward_hook(lambda m, a, k, o: calls.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        choice_logliks(model, tok, TASK, ROWS[:2], batch_size=50)
    finally:
        handle.remove()
    assert calls == [3]  # 1 carrier for row 0, 2 for row 1: one batch of 3 sequences


def test_through_the_prefix_cache(model_tok):
    from pipeline.config import parse_config
    from pipeline.models import trainable_model
    from pipeline.prefix_cache import disable_prefix_cache, enable_prefix_cache

    torch.manual_seed(1)
    model, tok = tiny_lab(layers=3)
    ref = brute_force(model, tok, ROWS)
    model = trainable_model(model, parse_config({"model": {"trainable": r"model\.layers\.2\."}}).model)
    state = enable_prefix_cache(model)
    try:
        for _ in range(2):  # fills the store, then served from it
            got = choice_logliks(model, tok, TASK, ROWS, batch_size=4)
            torch.testing.assert_close(torch.tensor([x for g in got for x in g], dtype=torch.float64),
                                       torch.tensor([x for r in ref for x in r], dtype=torch.float64),
                                       rtol=1e-5, atol=1e-4)
        assert state.hits == state.misses == 8  # 1 + 2 + 5 carriers per pass (bytes: no SST-5 label rides)
    finally:
        disable_prefix_cache(model)


def test_letter_continuations_score_the_letters_in_one_forward(model_tok):
    model, tok = model_tok
    task = get_task("psychol", {"scoring": "loglik", "continuations": "letters"})
    rows = [dict(r, prompt=r["prompt"][:40]) for r in ROWS[:2]]
    assert task.choice_continuations(rows[0]) == [" A", " B", " C", " D"]
    enc = encode_rows(tok, [{"prompt": rows[0]["prompt"], "target": c, "add_eos": False}
                            for c in task.choice_continuations(rows[0])], 10**9)
    assert len(set(option_carriers(enc).values())) == 1  # same length, same head: all ride on one sequence
    ref = brute_force(model, tok, rows, task)
    got = choice_logliks(model, tok, task, rows, batch_size=2)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="continuations"):
        get_task("psychol", {"continuations": "words"})
    with pytest.raises(ValueError, match="sst5"):
        get_task("sst5", {"continuations": "letters"})


def test_perplexity_per_sequence_in_row_order_with_length_sorted_batches():
    """`perplexity` batches rows of similar length together; each row's summed NLL and token count
    must still be its own (one forward per row, no padding) and come back in the order of the rows."""
    import math

    from pipeline.evaluate import perplexity

    torch.manual_seed(0)
    model, tok = tiny_lab(layers=2)
    texts = ["a b c d e f g h i j k l", "x", "p q r s", "one two three four five six", "z y", "m n o"]
    rows = [{"prompt": "", "target": t} for t in texts]
    ref_sums, ref_counts = [], []
    with torch.no_grad():
        for r in rows:
            e = encode_rows(tok, [r], 512)[0]
            logp = model(input_ids=torch.tensor([e.input_ids])).logits[0].double().log_softmax(-1)
            t = [q for q, lab in enumerate(e.labels) if lab != IGNORE]
            ref_sums.append(-sum(float(logp[q - 1, e.input_ids[q]]) for q in t))
            ref_counts.append(len(t))
    assert len(set(ref_counts)) >= 4  # rows of different lengths, not in length order
    ppl, sums, counts = perplexity(model, tok, rows, 512, batch_size=4)
    assert counts == ref_counts
    assert sums == pytest.approx(ref_sums, rel=1e-5)
    assert ppl == pytest.approx(math.exp(sum(ref_sums) / sum(ref_counts)), rel=1e-6)


def test_sst5_label_words_replace_the_classes_everywhere(fixture_files):
    """options.labels: the class-k word is the target, the answer, the k-th choice and what the prompt
    lists; extraction and the gold index follow it; the default words give the default rows."""
    from pipeline.tasks import get_task

    opts = fixture_files("sst5.jsonl")
    plain = get_task("sst5", opts).load("train", 5, 0, opts)
    reversed_ = ["very positive", "positive", "neutral", "negative", "very negative"]
    nonce = ["dax", "wug", "fep", "blick", "toma"]
    assert get_task("sst5", {**opts, "labels": list(reversed(reversed_))}).load("train", 5, 0, opts) == plain
    for words in (reversed_, nonce):
        task = get_task("sst5", {**opts, "labels": words})
        rows = task.load("train", 5, 0, opts)
        for p, r in zip(plain, rows):
            k = ["very negative", "negative", "neutral", "positive", "very positive"].index(p["answer"])
            assert r["answer"] == words[k] and r["target"] == " " + words[k] and r["choices"] == words
            assert r["prompt"].endswith(f"({', '.join(words)}):") and task.gold_index(r) == k
            assert task.score(f"It is {words[k]}, I think", r["answer"], r["choices"]) == 1.0
    assert get_task("sst5", {"labels": nonce}).extract("Blick!") == "blick"
    for bad in (["a", "b", "c", "d"], ["a", "b", "c", "d", "A"], ["a", "b", "c", "d", " "]):
        with pytest.raises(ValueError, match="options.labels"):
            get_task("sst5", {"labels": bad})
