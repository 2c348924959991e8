"""gsm8k: grade-school math word problems; exact match of the final number.

Conventions of lm-evaluation-harness: "strict" = the number after `#### `, "flexible" = the last
number in the output. Numbers are normalised: thousands separators, a leading `$`, trailing
units or a trailing period are dropped, "5.0" == "5", negatives and decimals kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Task
from .files import load_records, sample

_NUM = r"-?[\d,]*\.?\d+"


def normalize_number(s: str) -> str:
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    m = re.search(_NUM, s)
    if not m:
        return ""
    x = m.group(0).replace(",", "")
    if "." in x:
        x = x.rstrip("0").rstrip(".")
    if x in ("-0", ""):
        x = "0"
    return x


def strict_answer(text: str) -> str:
    m = re.search(r"####\s*\$?\s*(" + _NUM + ")", text)
    return normalize_number(m.group(1)) if m else ""


def flexible_answer(text: str) -> str:
    nums = re.findall(_NUM, text)
    return normalize_number(nums[-1]) if nums else ""


@dataclass(frozen=True)
class GSM8K(Task):
    name: str = "gsm8k"

    def load(self, split, n, seed, options):
        recs = load_records(options, split, hub_id="openai/gsm8k", hub_config="main", required=("question", "answer"))
        return [{"prompt": f"Question: {r['question'].strip()}\nAnswer:", "target": " " + r["answer"].strip(),
                 "answer": strict_answer(r["answer"])} for r in sample(recs, n, seed)]

    def extract(self, text, choices=None):
        return strict_answer(text)

    def score(self, generation, answer, choices=None):
        got = strict_answer(generation)
        return float(got != "" and got == normalize_number(answer))

    def extra_scores(self, generation, answer):
        got = flexible_answer(generation.split("Question:")[0])
        return {"flexible": float(got != "" and got == normalize_number(answer))}
