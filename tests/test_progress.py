"""Long loops over rows show a tqdm bar named after the stage and the part being scored, on the main
process only (the evaluate and prefix stages' scoring: generation, option log-likelihoods,
perplexity, the NLL sets)."""
import pytest

from pipeline import dist
from pipeline.config import parse_config
from pipeline.evaluate import evaluate_model
from pipeline.tasks import get_task

MC = [{"prompt": "Q: one?", "choices": ["a b", "a", "a c", "b"], "answer": "C"},
      {"prompt": "Q3", "choices": ["x", "y"], "answer": "B"}]
BARS = ["evaluate learn/lab_learn", "evaluate forget/psychol", "evaluate general", "evaluate NLL sets"]


def _evaluate(tiny):
    model, tok = tiny
    cfg = parse_config({"run": {"methods": ["base", "vanilla"]},
                        "data": {"forget": [{"task": "psychol", "options": {"scoring": "loglik"}}]},
                        "evaluate": {"max_new_tokens": 2, "batch_size": 2},
                        "confidence": {"auroc_positive": [], "auroc_negative": []}})
    learn = get_task("lab_learn").load("test", 3, 0, {})
    evaluate_model(model, tok, cfg.data, learn, {"psychol": MC}, get_task("lab_general").load("test", 3, 0, {}),
                   cfg.evaluate, nll_sets={"d_u": learn[:2]})


def test_evaluation_shows_a_bar_per_part(tiny, capsys):
    _evaluate(tiny)
    err = capsys.readouterr().err
    missing = [b for b in BARS if f"{b}:" not in err]
    assert not missing, f"no progress bar {missing} in:\n{err}"


def test_no_bar_on_other_processes(tiny, capsys, monkeypatch):
    monkeypatch.setattr(dist, "is_main", lambda: False)
    _evaluate(tiny)
    err = capsys.readouterr().err
    assert not [b for b in BARS if b in err], err


@pytest.mark.parametrize("desc", [None, "prefix train"])
def test_sequence_nlls_bar_only_when_named(tiny, rows, capsys, desc):
    from pipeline.data import encode_rows, sequence_nlls

    model, tok = tiny
    sequence_nlls(model, encode_rows(tok, rows, 64), tok.pad_token_id, 4, desc=desc)
    err = capsys.readouterr().err
    assert ("prefix train:" in err) == (desc is not None), err
