"""Task plugins: formatting, extraction and metrics on tricky answers; loaders on fixture files in
each dataset's real schema (no hub); the vendored subsets of the real datasets and the script that
draws them."""
import json
from pathlib import Path

import pytest
import torch

from pipeline.tasks import TASKS, get_task
from pipeline.tasks.choice import SST5_LABELS, extract_letter
from pipeline.tasks.gsm8k import flexible_answer, normalize_number, strict_answer


@pytest.mark.parametrize("text,want", [
    ("so 3 + 4 = 7\n#### 7", "7"), ("#### 1,234", "1234"), ("#### -3", "-3"), ("#### 2.50", "2.5"),
    ("#### 1,000.", "1000"), ("#### 18 dollars", "18"), ("no marker 42", ""), ("#### 5.0", "5"), ("#### .5", "0.5"),
    ("#### $1,000.", ""), ("####7", ""),  # lm-evaluation-harness's strict regex: "#### " then digits, no `$`
])
def test_gsm8k_strict(text, want):
    assert strict_answer(text) == want


@pytest.mark.parametrize("text,want", [
    ("The answer is 1,234 apples.", "1234"), ("first 3 then 12.", "12"), ("-7 degrees", "-7"), ("none", ""),
    ("It costs $1,000.", "1000"), ("half is .5", "0.5"),
])
def test_gsm8k_flexible(text, want):
    assert flexible_answer(text) == want


@pytest.mark.parametrize("got,gold", [(".5", "0.5"), ("5.0", "5"), ("1,000", "1000"), ("$5", "5"), ("12.", "12"),
                                      ("-0.50", "-0.5")])
def test_gsm8k_numbers_compare_normalised(got, gold):
    t = get_task("gsm8k")
    assert normalize_number(got) == gold
    assert t.extra_scores(f"so it is {got}", gold) == {"flexible": 1.0}
    assert t.score(f"so\n#### {got}", gold) == float(not got.startswith("$"))


def test_gsm8k_cuts_at_the_first_stop_string_before_both_metrics():
    t = get_task("gsm8k")
    assert t.stop[:2] == ("Question:", "\n\n")
    gen = " 3 + 5 = 8 dollars.\nQuestion: How much is 1 + 1? #### 2"  # the model goes on with a new question
    assert t.extract(gen) == "" and t.score(gen, "2") == t.score(gen, "8") == 0.0  # no "####" before the cut
    assert t.extra_scores(gen, "8") == {"flexible": 1.0} and t.extra_scores(gen, "2") == {"flexible": 0.0}
    gen = " 6 apples.\n\nNext: 7 + 0 = 7\n#### 7"
    assert t.score(gen, "7") == 0.0 and t.extra_scores(gen, "6") == {"flexible": 1.0}


def test_gsm8k_loader_and_metric(fixture_files):
    t = get_task("gsm8k")
    rows = t.load("train", 10, 0, fixture_files("gsm8k.jsonl"))
    assert len(rows) == 6 and all(r["prompt"].startswith("Question: ") and r["prompt"].endswith("\nAnswer:") for r in rows)
    by_answer = {r["answer"]: r for r in rows}
    assert {"7", "2400", "-3", "2.5"} <= set(by_answer)
    assert t.score("blah #### 2,400", "2400") == 1.0 and t.score("2400", "2400") == 0.0  # strict needs ####
    assert t.extra_scores("it is 2,400", "2400") == {"flexible": 1.0}
    assert normalize_number("1,234.00") == "1234"


def test_real_gsm8k_solutions_parse_and_score_full_marks_up_to_the_stop_string():
    """On the vendored GSM8K rows (1,300 rows of the real dataset, as published): every gold answer
    has a parsable '#### <number>', and the reference solution itself scores 1 under the metric,
    unless it holds a blank line: the task's stop string "\\n\\n" (lm-eval's too) cuts it before '####'."""
    from pipeline.tasks.files import VENDORED

    t = get_task("gsm8k")
    files = {split: VENDORED / "openai/gsm8k/main" / f"{split}.jsonl" for split in ("train", "test")}
    test = t.load("test", 10**6, 0, {"data_files": {k: str(v) for k, v in files.items()}})
    assert len(test) == 300 and all(r["answer"] != "" for r in test)
    raw = [json.loads(x) for f in files.values() for x in f.read_text().splitlines()]
    assert len(raw) == 1300 and all(r["answer"].count("#### ") == 1 for r in raw)
    assert [t.score(r["answer"], strict_answer(r["answer"])) for r in raw] == [float("\n\n" not in r["answer"]) for r in raw]
    assert sum("\n\n" in r["answer"] for r in raw) == 1


@pytest.mark.parametrize("text,want", [
    ("C", "C"), ("(C)", "C"), ("The answer is (C).", "C"), ("answer: b", "B"), ("  d) enamel", "D"),
    ("I think it's (A) because", "A"), ("The answer is C.", "C"), ("nothing", ""), ("H.", "H"),
    ("C.", "C"), ("C)", "C"), ("C: enamel", "C"), ("Answer: C", "C"), ("The answer is C", "C"), ("C\nbecause", "C"),
    ("C!", "C"), ("answer is (c)", "C"), ("(c)", "C"), ("the answer is c.", "C"), ("ANSWER IS B", "B"),
])
def test_letter_extraction(text, want):
    assert extract_letter(text, 8) == want


@pytest.mark.parametrize("text", [
    "A 45-year-old patient presents with pain", "a tooth is made of", "The answer is a bit unclear",
    "c", "c.", "the answer is c because", "C, D", "E.", "Everything",
])
def test_no_letter_unless_it_stands_as_an_answer(text):
    assert extract_letter(text, 4) == ""


DENTAL = ["enamel", "dentin", "pulp", "cementum"]


@pytest.mark.parametrize("text,want", [
    ("Pulp", "C"), (" It is the PULP.\n", "C"), ("a tooth is made of enamel", "A"), ("pulp or dentin", ""),
    ("the pulpit", ""), ("A 45-year-old patient", ""), ("E.", ""),
])
def test_choice_task_uses_the_rows_options(text, want):
    assert get_task("dental").extract(text, DENTAL) == want


def test_option_text_equal_to_the_generation_wins():
    t = get_task("qasc")
    assert t.extract("Salt water.", ["water", "salt water"]) == "B"
    assert t.extract("salt water is wet", ["water", "salt water"]) == ""  # two options' texts occur
    assert t.extract("E.", DENTAL + ["bone"]) == "E" and t.score("It is bone", "E", DENTAL + ["bone"]) == 1.0


def test_qasc_dental_psychol_loaders(fixture_files):
    files = fixture_files
    q = get_task("qasc").load("train", 10, 0, files("qasc.jsonl"))
    assert len(q) == 3 and all(len(r["choices"]) == 8 for r in q)
    assert {r["answer"] for r in q} == {"A", "B", "C"} and "H. " in q[0]["prompt"]
    d = get_task("dental").load("test", 10, 0, files("medmcqa.jsonl"))
    assert len(d) == 2 and all(len(r["choices"]) == 4 for r in d)  # the Physiology row is filtered out
    p = get_task("psychol").load("train", 10, 0, files("mmlu_psychology.jsonl"))
    assert {r["answer"] for r in p} == {"A", "B"}
    assert get_task("qasc").score("The answer is (B).", "B") == 1.0


@pytest.mark.parametrize("text,want", [
    ("very positive", "very positive"), ("  Positive ", "positive"), ("VERY NEGATIVE!", "very negative"),
    ("it is negative, not very negative", "negative"), ("neutral.", "neutral"), ("meh", ""),
])
def test_sst5_labels(text, want):
    assert get_task("sst5").extract(text) == want


def test_sst5_loader(fixture_files):
    t = get_task("sst5")
    rows = t.load("train", 10, 0, fixture_files("sst5.jsonl"))
    assert sorted(r["answer"] for r in rows) == sorted(["very negative", "negative", "neutral", "positive", "very positive"])
    assert t.score(" Very Positive", "very positive") == 1.0


def test_custom_task_fields_and_metrics(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("q,a\nwhat is up,the sky\n2+2,4\n")
    opts = {"data_files": {"train": str(f), "test": str(f)}, "prompt_field": "q", "target_field": "a",
            "prompt_template": "Q: {prompt}\nA:", "metric": "contains"}  # a train file alone: its test split is carved
    t = get_task("custom", opts)
    rows = t.load("train", 5, 0, opts)
    assert {r["prompt"] for r in rows} == {"Q: what is up\nA:", "Q: 2+2\nA:"}
    assert t.score("I'd say The Sky!", "the sky") == 1.0
    with pytest.raises(ValueError, match="metric"):
        get_task("custom", {"metric": "bleu"})
    assert not get_task("custom", {"metric": "none"}).has_gold


def test_general_text_drops_records_without_text_and_keeps_prompt_only_rows(tmp_path):
    """wikitext has empty lines: a general-text row without a token would count as NLL 0 in the
    guard's mean and in no perplexity; a prompt-only row (a metric-none forgetting task) stays."""
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in ["", " = Title = ", "   ", "a line", "\n"]) + "\n")
    text = {"data_files": {"train": str(f), "test": str(f)}, "prompt_field": "text", "target_field": "text",
            "prompt_template": "", "metric": "none"}
    rows = get_task("custom", text).load("train", 10, 0, text)
    assert sorted(r["target"].strip() for r in rows) == ["= Title =", "a line"]
    prompts = {**text, "prompt_template": "Say: {prompt}", "target_field": "missing"}
    assert len(get_task("custom", prompts).load("train", 10, 0, prompts)) == 5


def test_loglik_choice_scoring(tiny, fixture_files):
    from pipeline.evaluate import task_scores

    model, tok = tiny
    t = get_task("qasc", {"scoring": "loglik"})
    rows = t.load("test", 3, 0, fixture_files("qasc.jsonl"))
    items, _ = task_scores(model, tok, t, rows, 12, 4)
    assert len(items) == 3 and set(items) <= {0.0, 1.0}

    # the reference: each option's summed log-likelihood after [bos] + prompt, one forward pass each
    def loglik(prompt, cont):
        p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([p + c])).logits[0].log_softmax(-1)
        return sum(logp[len(p) - 1 + k, t_].item() for k, t_ in enumerate(c))

    best = [max(range(len(r["choices"])), key=lambda j: loglik(r["prompt"], " " + r["choices"][j])) for r in rows]
    assert items == [float(b == t.gold_index(r)) for b, r in zip(best, rows)]
    letters = "ABCDEFGH"  # the model's favourite made the gold answer: every item right; another one: every item wrong
    right = [dict(r, answer=letters[b]) for r, b in zip(rows, best)]
    wrong = [dict(r, answer=letters[(b + 1) % len(r["choices"])]) for r, b in zip(rows, best)]
    assert task_scores(model, tok, t, right, 12, 4)[0] == [1.0] * 3
    assert task_scores(model, tok, t, wrong, 12, 4)[0] == [0.0] * 3


def test_evaluation_cuts_at_the_task_stop_and_scores_with_the_rows_options(scripted, tiny, monkeypatch):
    from pipeline import evaluate

    seen, real = [], evaluate.generate
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: seen.append(k.get("stop")) or real(*a, **k))
    gsm = get_task("gsm8k")
    rows = [{"prompt": "Question: 3 + 5?\nAnswer:", "target": "", "answer": "8"}]
    model = scripted(" 3 + 5 = 8 dollars.\nQuestion: 1 + 1? #### 2")
    items, extra = evaluate.task_scores(model, tiny[1], gsm, rows, 64, 4)
    assert seen == [gsm.stop] and items == [0.0] and extra == {"flexible": 1.0}
    rows = [{"prompt": "Question: What is the tooth's core?\nAnswer:", "target": "", "answer": "C", "choices": DENTAL}]
    assert evaluate.task_scores(scripted(" It is the pulp."), tiny[1], get_task("dental"), rows, 64, 4)[0] == [1.0]


def test_registry_has_the_paper_tasks():
    assert {"gsm8k", "qasc", "sst5", "dental", "psychol", "custom"} <= set(TASKS)


VENDORED_COUNTS = [  # task, split, params options, rows (every vendored row: n above the split's size)
    ("sst5", "train", {}, 2000), ("sst5", "test", {}, 500), ("sst5", "test", {"test_split": "validation"}, 300),
    ("psychol", "train", {}, 60 + 69), ("psychol", "test", {}, 545 + 612),  # MMLU validation / test, both subjects
    ("gsm8k", "train", {}, 1000), ("gsm8k", "test", {}, 300),
]


@pytest.mark.parametrize("name,split,opts,n", VENDORED_COUNTS, ids=[f"{t}-{s}-{n}" for t, s, _, n in VENDORED_COUNTS])
def test_vendored_subsets_load_through_the_registry(name, split, opts, n):
    opts = {"source": "vendored", **opts}
    rows = get_task(name, opts).load(split, 10**6, 0, opts)
    assert len(rows) == n and all(r["prompt"] and r["target"].strip() and r["answer"] for r in rows)
    if name == "gsm8k":
        assert all(r["prompt"].startswith("Question: ") and r["target"].split("#### ")[-1].strip() for r in rows)
    else:
        assert {r["answer"] for r in rows} == ({"A", "B", "C", "D"} if name == "psychol" else set(SST5_LABELS))
        assert all(len(r["choices"]) == (4 if name == "psychol" else 5) for r in rows)


def test_vendored_source_errors_and_precedence(fixture_files):
    with pytest.raises(ValueError, match="no vendored copy of 'allenai/qasc'.*: SetFit/sst5, cais/mmlu, openai/gsm8k"):
        get_task("qasc").load("train", 4, 0, {"source": "vendored"})
    with pytest.raises(ValueError, match="options.source 'web' must be one of hub, vendored"):
        get_task("sst5").load("train", 4, 0, {"source": "web"})
    rows = get_task("sst5").load("train", 100, 0, {"source": "vendored", **fixture_files("sst5.jsonl")})
    assert len(rows) == 5  # the user's data_files win over the vendored copy
    with pytest.raises(ValueError, match=r"options.data_files.train or options.source: vendored"):
        get_task("gsm8k").load("train", 4, 0, {})  # offline (conftest): the hub fails, the message points here


def test_split_slices_draw_disjoint_rows_from_one_split():
    """`options.train_slice`: two references to SST-5's train split (the learning rows and the
    forgetting task's prompts of the conflict preset) draw from disjoint records, whatever the seeds."""
    learn = {"source": "vendored", "train_slice": [0, 1600]}
    forget = {"source": "vendored", "train_slice": [1600, 2000]}
    a = get_task("sst5", learn).load("train", 10**6, 0, learn)
    b = get_task("sst5", forget).load("train", 10**6, 0, forget)
    whole = get_task("sst5", {"source": "vendored"}).load("train", 10**6, 0, {"source": "vendored"})
    assert (len(a), len(b)) == (1600, 400) and not {r["prompt"] for r in a} & {r["prompt"] for r in b}
    assert {r["prompt"] for r in a} | {r["prompt"] for r in b} == {r["prompt"] for r in whole}
    for bad in ([5, 5], [0, 2001], [-1, 3], "0:10"):
        with pytest.raises(ValueError, match=r"options.train_slice .* must be \[start, stop\]"):
            get_task("sst5").load("train", 4, 0, {"source": "vendored", "train_slice": bad})


def test_vendored_files_match_their_provenance():
    """Every vendored dataset has a LICENSE and a PROVENANCE.md that lists each of its files with
    its row count and sha256."""
    import hashlib

    from pipeline.tasks.files import VENDORED, vendored_datasets

    assert vendored_datasets() == ["SetFit/sst5", "cais/mmlu", "openai/gsm8k"]
    for ds in vendored_datasets():
        prov = (VENDORED / ds / "PROVENANCE.md").read_text()
        assert (VENDORED / ds / "LICENSE").read_text().strip()
        for f in sorted((VENDORED / ds).rglob("*.jsonl")):
            data = f.read_bytes()
            rows = data.count(b"\n")
            assert f"| {f.relative_to(VENDORED / ds)} | {rows} |" in prov
            assert hashlib.sha256(data).hexdigest() in prov, f


def test_make_subsets_draws_the_documented_rows_byte_for_byte(tmp_path):
    """The script that drew the vendored subsets (make_subsets.py), run on a generated full copy with
    the real files' row counts (PROVENANCE.md's "of" column; the real copies are not shipped): it
    writes exactly the vendored files, each with its documented row count, the rows drawn without
    repeats and kept in source order, every byte as in the source (non-ASCII, U+2028, CRLF), the same
    bytes on a second run. The vendored bytes themselves are pinned by their sha256 (above)."""
    import importlib.util
    import re

    from pipeline.tasks.files import VENDORED

    spec = importlib.util.spec_from_file_location("make_subsets", VENDORED / "make_subsets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    documented = {}  # vendored file -> (rows, rows of the full file)
    for prov in VENDORED.rglob("PROVENANCE.md"):
        for m in re.finditer(r"^\| ([\w/.-]+\.jsonl) \| (\d+) \|(?: (\d+) \|)?", prov.read_text(), re.M):
            documented[prov.parent.relative_to(VENDORED) / m.group(1)] = (int(m.group(2)), int(m.group(3) or m.group(2)))
    for (hub_id, config, split), (src, k) in mod.SUBSETS.items():
        rel = Path(hub_id) / (config or "default") / f"{split}.jsonl"
        (tmp_path / src).parent.mkdir(parents=True, exist_ok=True)
        n = documented[rel][1]
        (tmp_path / src).write_bytes(b"".join(f'{{"src": "{src}", "i": {i}, "t": "caf\u00e9\u2028"}}'.encode()
                                              + (b"\r\n" if i % 7 == 0 else b"\n") for i in range(n)))
    built = mod.build(tmp_path)
    assert sorted(built) == sorted(p.relative_to(VENDORED) for p in VENDORED.rglob("*.jsonl")) == sorted(documented)
    for rel, text in built.items():
        src, _ = next(v for (h, c, sp), v in mod.SUBSETS.items() if Path(h) / (c or "default") / f"{sp}.jsonl" == rel)
        lines = [ln + "\n" for ln in text.split("\n")[:-1]]  # (str.splitlines would also split at U+2028)
        assert text.endswith("\n") and "".join(lines) == text
        picked = [json.loads(ln)["i"] for ln in lines]
        assert len(lines) == documented[rel][0] and picked == sorted(set(picked)), rel
        assert all(json.loads(ln)["src"] == src and "caf\u00e9\u2028" in ln for ln in lines)
        assert all(ln.endswith("\r\n") == (i % 7 == 0) for ln, i in zip(lines, picked))
    assert mod.build(tmp_path) == built


def test_lab_control_corpora_keep_the_format_and_drop_the_rule():
    """The negative-transfer control (`control.corpus`): random_cities keeps the "X lives in
    <city>" facts at the base corpus's share but draws their cities independently of the third
    letter; without_facts has none. The base corpus follows the conflicting rule."""
    from pipeline.config import LabConfig
    from pipeline.lab import control_lab
    from pipeline.tasks.lab import CITY_BY_THIRD, pretrain_corpus

    def facts(lab):
        texts = pretrain_corpus(4000, 0, lab.conflict_weight, lab.conflict_noise)
        return [t.split(" lives in ") for t in texts if " lives in " in t]

    base = LabConfig(conflict_weight=0.4, conflict_noise=0.0)  # every conflicting fact follows the rule
    for lab, share, rule in ((base, 0.4, 1.0), (control_lab(base, "random_cities"), 0.4, 1 / 8)):
        f = facts(lab)
        agree = sum(CITY_BY_THIRD[name[2]] == city for name, city in f) / len(f)
        assert abs(len(f) / 4000 - share) < 0.03 and abs(agree - rule) < 0.03, (lab, len(f), agree)
    assert facts(control_lab(base, "without_facts")) == []
