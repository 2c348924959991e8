"""The task plugin interface: loading, prompt format, answer extraction, metric.

Nothing outside `pipeline/tasks/` knows a task's name. A task yields rows with three string
fields: `prompt` (what the model sees), `target` (the training continuation, no EOS) and
`answer` (the gold answer that `score` compares an extracted prediction with; "" if none);
multiple-choice rows also carry `choices` (the option texts), which callers pass to `score`.
A task's `stop` strings end a generated response (`pipeline.generation.generate` cuts it before the
first one).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ROW_FIELDS = ("prompt", "target", "answer")


@dataclass(frozen=True)
class Task:
    name: str = ""
    has_gold: bool = True  # False: prompts only (the forgetting task's knowledge is what the model says)
    # True: load("validation", ...) gives rows of the task's own validation split, disjoint from train and
    # test (early stopping of the optimum stage, fisher.at: heldout); False where it is missing or aliases test
    has_validation: bool = False
    scoring: str = "generate"  # generate: greedy generation + extraction; loglik: option log-likelihood ranking
    stop: tuple[str, ...] = ()  # strings that end a response (generation is cut before the first one)

    def with_options(self, options: dict) -> "Task":
        """The task configured by its params `options` (most tasks ignore them here)."""
        return self

    def load(self, split: str, n: int, seed: int, options: dict) -> list[dict]:
        raise NotImplementedError

    def extra_scores(self, generation: str, answer: str) -> dict[str, float]:
        """Secondary metrics reported beside `score` (e.g. gsm8k "flexible")."""
        return {}

    def extract(self, text: str, choices: list[str] | None = None) -> str:
        """The answer part of a generation (default: first line, stripped); `choices`: the row's
        option texts, for tasks that have them."""
        text = text.strip()
        return text.splitlines()[0].strip() if text else ""

    def score(self, generation: str, answer: str, choices: list[str] | None = None) -> float:
        """1.0 when the extracted answer matches the gold answer (case and space insensitive)."""
        return float(_norm(self.extract(generation, choices)) == _norm(answer))


def cut_at(text: str, stop) -> str:
    """`text` before the earliest occurrence of any of the `stop` strings (all of it if none occurs)."""
    return text[:min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))]


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())
