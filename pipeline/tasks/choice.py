"""Multiple-choice and classification tasks of the paper: qasc, sst5, dental, psychol.

Rows carry `choices` (the option texts) and `answer` (the gold letter, or label word for sst5).
Two scoring conventions (params: the task's `options.scoring`):

- `generate` (default): greedy generation, then the chosen option is extracted from the text
  (`extract_letter`: a letter only where it stands as an answer, else the option text the output
  states; sst5: the earliest label word, any case); nothing found scores 0;
- `loglik`: lm-evaluation-harness style, the option whose continuation has the highest total
  log-likelihood after the prompt wins (no generation, no extraction). The continuations are the
  option texts (`options.continuations: texts`, default) or the letters the prompt lists them
  under (`letters`: " A", " B", ...; lm-evaluation-harness's MMLU convention; one token each, so a
  row needs one forward, not one per option).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .base import Task, _norm
from .files import load_records, sample

LETTERS = "ABCDEFGH"


def mc_prompt(question: str, choices: list[str]) -> str:
    opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"Question: {question.strip()}\n{opts}\nAnswer:"


def extract_letter(text: str, n_choices: int, choices: list[str] | None = None) -> str:
    """The option a generation chooses, as a letter of the first `n_choices`; "" if it states none.

    A letter counts only where it stands as an answer: "Answer: C", "The answer is C", "answer is
    (C)"; "C", "C.", "C)", "C:" opening the output (a bare letter: alone, or with punctuation only);
    "(C)" anywhere. A lowercase letter counts only in "(c)", "c)" and "answer is c" (followed by
    punctuation or the end of the line), never as the article in "a tooth is ..." or "The answer is
    a bit unclear". Otherwise, given the option texts `choices`: the option the generation equals,
    or the only one whose text it contains (case-insensitive, whole words).
    """
    up = LETTERS[:n_choices]
    lo = up.lower()
    answer_is = (rf"\b(?i:answer\s*(?:is\s*:?|:))\s*"
                 rf"(?:\(([{up}{lo}])\)|([{up}])(?![\w'-])|([{lo}])(?=[^\w\s-]|[ \t]*(?:\n|$)))")
    opening = rf"^(?:([{up}])(?:[.):]|[^\w\s]*$)|([{lo}])\))"
    in_parens = rf"\(([{up}{lo}])\)"
    t = text.strip()
    for pat, where in ((answer_is, t), (opening, t.split("\n", 1)[0].strip()), (in_parens, t)):
        m = re.search(pat, where)
        if m:
            return next(g for g in m.groups() if g).upper()
    if choices:
        said = _norm(t).rstrip(".")
        opts = [_norm(c).rstrip(".") for c in choices]
        hits = [i for i, o in enumerate(opts) if o == said] or \
               [i for i, o in enumerate(opts) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", said)]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return ""


@dataclass(frozen=True)
class ChoiceTask(Task):
    continuations: str = "texts"  # loglik: score the option texts | the letters (options.continuations)

    def with_options(self, options):
        scoring = options.get("scoring", "generate")
        if scoring not in ("generate", "loglik"):
            raise ValueError(f"options.scoring {scoring!r} must be 'generate' or 'loglik'")
        cont = options.get("continuations", "texts")
        if cont not in ("texts", "letters"):
            raise ValueError(f"options.continuations {cont!r} must be 'texts' or 'letters'")
        return replace(self, scoring=scoring, continuations=cont)

    def records(self, split, options) -> list[dict]:
        """Records in a common form: question, choices (list), gold (int)."""
        raise NotImplementedError

    def load(self, split, n, seed, options):
        return [{"prompt": mc_prompt(r["question"], r["choices"]), "target": " " + LETTERS[r["gold"]],
                 "answer": LETTERS[r["gold"]], "choices": list(r["choices"])}
                for r in sample(self.records(split, options), n, seed)]

    def extract(self, text, choices=None):
        return extract_letter(text, len(choices) if choices else len(LETTERS), choices)

    def choice_continuations(self, row) -> list[str]:
        if self.continuations == "letters":
            return [" " + LETTERS[i] for i in range(len(row["choices"]))]
        return [" " + c for c in row["choices"]]

    def gold_index(self, row) -> int:
        return LETTERS.index(row["answer"])


@dataclass(frozen=True)
class QASC(ChoiceTask):
    """8-way multiple-choice science QA (allenai/qasc)."""
    name: str = "qasc"

    def records(self, split, options):
        recs = load_records(options, split, hub_id="allenai/qasc", required=("question", "choices", "answerKey"),
                            hub_split="validation" if split == "test" else split)  # qasc's test has no keys
        return [{"question": r["question"], "choices": list(r["choices"]["text"]),
                 "gold": list(r["choices"]["label"]).index(r["answerKey"])} for r in recs]


@dataclass(frozen=True)
class Dental(ChoiceTask):
    """MedMCQA questions whose subject is Dental; 4 options (openlifescienceai/medmcqa)."""
    name: str = "dental"

    def records(self, split, options):
        recs = load_records(options, split, hub_id="openlifescienceai/medmcqa",
                            required=("question", "opa", "opb", "opc", "opd", "cop", "subject_name"),
                            hub_split="validation" if split == "test" else split)  # medmcqa's test has no keys
        return [{"question": r["question"], "choices": [r["opa"], r["opb"], r["opc"], r["opd"]], "gold": int(r["cop"])}
                for r in recs if r["subject_name"] == options.get("subject", "Dental")]


@dataclass(frozen=True)
class Psychol(ChoiceTask):
    """MMLU psychology subjects (the authors' `mmlu_psychology`); 4 options (cais/mmlu)."""
    name: str = "psychol"

    def records(self, split, options):
        subjects = options.get("subjects", ["high_school_psychology", "professional_psychology"])
        hub_split = "validation" if split == "train" else "test"  # MMLU has no train split of its own
        if split in options.get("data_files", {}):
            subjects = [None]
        out = []
        for sub in subjects:
            recs = load_records({**options, "hub_config": sub} if sub else options, split, hub_id="cais/mmlu",
                                required=("question", "choices", "answer"), hub_split=hub_split)
            out += [{"question": r["question"], "choices": list(r["choices"]), "gold": int(r["answer"])} for r in recs]
        return out


SST5_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")


@dataclass(frozen=True)
class SST5(ChoiceTask):
    """5-class sentiment (SetFit/sst5): the answer is a label word. `options.labels`: the 5 words
    for the classes very negative ... very positive (default: those words). Other words make the
    task one the model has a wrong prior for (e.g. the list reversed: a very positive review is to
    be answered "very negative") or no prior for (nonce words); the prompt lists them in class order."""
    name: str = "sst5"
    has_validation: bool = True  # SetFit/sst5's own validation split (vendored: 300 rows)
    labels: tuple = SST5_LABELS

    def with_options(self, options):
        if options.get("continuations", "texts") != "texts":
            raise ValueError("options.continuations: sst5's prompt lists label words, not letters; use 'texts'")
        labels = tuple(options.get("labels", SST5_LABELS))
        if len(labels) != 5 or len({_norm(w) for w in labels}) != 5 or not all(isinstance(w, str) and w.strip()
                                                                               for w in labels):
            raise ValueError(f"options.labels must be 5 different words, one per class from very negative to very "
                             f"positive (got {list(labels)})")
        return replace(super().with_options(options), labels=tuple(w.strip() for w in labels))

    def load(self, split, n, seed, options):
        recs = load_records(options, split, hub_id="SetFit/sst5", required=("text", "label"))
        listed = ", ".join(self.labels)
        return [{"prompt": f"Review: {r['text'].strip()}\nSentiment ({listed}):", "target": " " + self.labels[int(r["label"])],
                 "answer": self.labels[int(r["label"])], "choices": list(self.labels)}
                for r in sample(recs, n, seed)]

    def extract(self, text, choices=None):
        t = _norm(text)
        hits = [(t.find(_norm(lab)), -len(lab), lab) for lab in (choices or self.labels) if _norm(lab) in t]
        return min(hits)[2] if hits else ""  # earliest mention; "very negative" beats "negative"

    def gold_index(self, row):
        return list(row.get("choices") or self.labels).index(row["answer"])
