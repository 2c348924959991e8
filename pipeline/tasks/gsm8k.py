"""gsm8k: grade-school math word problems; exact match of the final number.

The two metrics of lm-evaluation-harness (`lm_eval/tasks/gsm8k/gsm8k.yaml`), with its regexes:
"strict" (the main score) = the first match of `#### (\\-?[0-9\\.\\,]+)`; "flexible" = the last
match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`. Both read the generation only up to its first stop string
(`STOP`: lm-eval's `until` "Question:", "</s>", "<|im_end|>", plus a blank line "\\n\\n"), which is
also where generation is cut. Numbers compare after a broader normalisation than lm-eval's (which
only drops `,`, `$` and one trailing `.`): also ".5" == "0.5" and "5.0" == "5".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Context, Decimal

from .base import Task, cut_at
from .files import load_records, sample

STOP = ("Question:", "\n\n", "</s>", "<|im_end|>")
STRICT = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"


def normalize_number(s: str) -> str:
    """The first number in `s` in one form: `,` and `$` dropped, no trailing zeros or `.`, a leading
    0 before the point ("1,000" -> "1000", "$5" -> "5", "5.0" -> "5", ".5" -> "0.5"); "" if none."""
    m = re.search(r"-?\d*\.?\d+", s.replace(",", "").replace("$", ""))
    if not m:
        return ""
    x = Decimal(m.group(0)).normalize(Context(prec=len(m.group(0))))  # exact: as many digits as the text
    return "0" if x == 0 else f"{x:f}"


def strict_answer(text: str) -> str:
    m = re.search(STRICT, text)
    return normalize_number(m.group(1)) if m else ""


def flexible_answer(text: str) -> str:
    found = re.findall(FLEXIBLE, text)
    return normalize_number("".join(found[-1])) if found else ""


@dataclass(frozen=True)
class GSM8K(Task):
    name: str = "gsm8k"
    stop: tuple[str, ...] = STOP

    def load(self, split, n, seed, options):
        recs = load_records(options, split, hub_id="openai/gsm8k", hub_config="main", required=("question", "answer"))
        return [{"prompt": f"Question: {r['question'].strip()}\nAnswer:", "target": " " + r["answer"].strip(),
                 "answer": strict_answer(r["answer"])} for r in sample(recs, n, seed)]

    def extract(self, text, choices=None):
        return strict_answer(cut_at(text, self.stop))

    def score(self, generation, answer, choices=None):
        got = self.extract(generation)
        return float(got != "" and got == normalize_number(answer))

    def extra_scores(self, generation, answer):
        got = flexible_answer(cut_at(generation, self.stop))
        return {"flexible": float(got != "" and got == normalize_number(answer))}
