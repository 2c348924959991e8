"""Multiple-choice and classification tasks of the paper: qasc, sst5, dental, psychol.

Rows carry `choices` (the option texts) and `answer` (the gold letter, or label word for sst5).
Two scoring conventions (params: the task's `options.scoring`):

- `generate` (default): greedy generation, then the letter/label is extracted from the text
  ("C", "(C)", "The answer is C.", "c) ...", lowercase labels, extra spaces);
- `loglik`: lm-evaluation-harness style, the option whose continuation has the highest total
  log-likelihood after the prompt wins (no generation, no extraction).
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


def extract_letter(text: str, n_choices: int) -> str:
    """The chosen option letter of a generation, or "" if none is found."""
    valid = LETTERS[:n_choices]
    t = text.strip()
    pats = [rf"answer\s*(?:is|:)?\s*\(?([{valid}])\)?\b", rf"^\(?([{valid}])\)?(?:[.):\s]|$)", rf"\(([{valid}])\)"]
    for pat in pats:
        m = re.search(pat, t, flags=re.IGNORECASE | re.MULTILINE)
        if m:
            return m.group(1).upper()
    return ""


@dataclass(frozen=True)
class ChoiceTask(Task):
    def with_options(self, options):
        scoring = options.get("scoring", "generate")
        if scoring not in ("generate", "loglik"):
            raise ValueError(f"options.scoring {scoring!r} must be 'generate' or 'loglik'")
        return replace(self, scoring=scoring)

    def records(self, split, options) -> list[dict]:
        """Records in a common form: question, choices (list), gold (int)."""
        raise NotImplementedError

    def load(self, split, n, seed, options):
        return [{"prompt": mc_prompt(r["question"], r["choices"]), "target": " " + LETTERS[r["gold"]],
                 "answer": LETTERS[r["gold"]], "choices": list(r["choices"])}
                for r in sample(self.records(split, options), n, seed)]

    def extract(self, text):
        return extract_letter(text, len(LETTERS))

    def choice_continuations(self, row) -> list[str]:
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
    """5-class sentiment (SetFit/sst5): the answer is a label word."""
    name: str = "sst5"

    def load(self, split, n, seed, options):
        recs = load_records(options, split, hub_id="SetFit/sst5", required=("text", "label"))
        return [{"prompt": f"Review: {r['text'].strip()}\nSentiment (very negative, negative, neutral, positive, "
                           f"very positive):", "target": " " + SST5_LABELS[int(r["label"])],
                 "answer": SST5_LABELS[int(r["label"])], "choices": list(SST5_LABELS)}
                for r in sample(recs, n, seed)]

    def extract(self, text):
        t = _norm(text)
        hits = [(t.find(lab), -len(lab), lab) for lab in SST5_LABELS if lab in t]
        return min(hits)[2] if hits else ""  # earliest mention; "very negative" beats "negative"

    def gold_index(self, row):
        return SST5_LABELS.index(row["answer"])
