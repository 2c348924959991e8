"""custom: any local file (json/jsonl/csv/parquet) or hub dataset; field names and metric in params.

    data:
      learn: {task: custom, options: {data_files: {train: a.jsonl, test: b.jsonl},
                                      prompt_field: question, target_field: answer,
                                      prompt_template: "Q: {prompt}\\nA:", metric: exact}}

metric: exact (case/space-insensitive exact match of the first line), contains (gold answer
appears in the output), number (gsm8k-style last-number match), none (no gold: prompts only,
e.g. a forgetting task whose knowledge is whatever the model says).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .base import Task, _norm
from .files import load_records, sample
from .gsm8k import flexible_answer, normalize_number

METRICS = ("exact", "contains", "number", "none")


@dataclass(frozen=True)
class Custom(Task):
    name: str = "custom"
    metric: str = "exact"

    def with_options(self, options: dict) -> "Custom":
        metric = options.get("metric", "exact")
        if metric not in METRICS:
            raise ValueError(f"options.metric {metric!r} is not one of {METRICS}")
        return replace(self, metric=metric, has_gold=metric != "none")

    def load(self, split, n, seed, options):
        pf, tf = options.get("prompt_field", "prompt"), options.get("target_field", "target")
        recs = load_records(options, split, required=(pf,) if self.metric == "none" else (pf, tf))
        tpl = options.get("prompt_template", "{prompt}")
        rows = []
        for r in sample(recs, n, seed):
            target = "" if r.get(tf) is None else str(r.get(tf))
            rows.append({"prompt": tpl.format(prompt=str(r[pf])), "target": (" " + target) if target else "",
                         "answer": target.strip()})
        return rows

    def score(self, generation, answer, choices=None):
        if self.metric == "contains":
            return float(_norm(answer) in _norm(generation))
        if self.metric == "number":
            return float(flexible_answer(generation) == normalize_number(answer) != "")
        return super().score(generation, answer, choices)
