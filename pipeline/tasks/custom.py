"""custom: any local file (json/jsonl/csv/parquet) or hub dataset, in its own field names.

    data:
      learn: {task: custom, options: {data_files: {train: a.jsonl, test: b.jsonl}, name: my_qa,
                                      prompt_field: question, target_field: answer,
                                      prompt_template: "Q: {prompt}\\nA:", metric: exact}}

Every option is documented in docs/custom-task.md. In short:

- `prompt_template` is a Python format string over the record: `{prompt}` is the value of
  `prompt_field`, and any field of the record is a placeholder by its own name (`{question}`,
  `{context}`); `{{` and `}}` are literal braces. A placeholder that is not a field fails naming it.
- the training target is `" " + target_field` (one leading space, so a tokenizer that marks word
  starts sees a word); the gold answer is the target, stripped.
- metric: exact (case/space-insensitive exact match of the first line of the output), contains
  (the gold answer appears in the output), number (gsm8k-style last-number match), none (no gold:
  prompts only, e.g. a forgetting task whose knowledge is whatever the model says, or general text).
- multiple choice: `choices_field` (a list of option texts per record); the gold is the target
  field as an index (0-based), a letter, or the option's text; `scoring: generate | loglik`.
- splits: `data_files` may give train, validation and test; a missing one is carved from the
  others' pool (the train file, else the test file) with `carve` fractions, disjoint from the rest.
- `name`: what the report calls the task (default `custom`); two custom forgetting tasks need two names.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, replace

from .base import Task, _norm
from .choice import LETTERS, ChoiceTask, mc_prompt
from .files import load_records, sample
from .gsm8k import flexible_answer, normalize_number

METRICS = ("exact", "contains", "number", "none")
CARVED = ("train", "validation", "test")
DEFAULT_CARVE = {"train": 0.2, "test": 0.2}  # a missing train or test split; validation only when asked for
CARVE_SEED = 0  # the partition of a file into carved splits: fixed, so every split sees the same one


def placeholders(template: str) -> list[str]:
    """The field names a `prompt_template` refers to (`{x}`, `{x!r}`, `{x:>5}` all name x)."""
    try:
        return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # a lone { or }
        raise ValueError(f"options.prompt_template {template!r} is not a format string ({e}); "
                         "write a literal brace as {{ or }}") from None


def fill(template: str, record: dict, prompt_field: str) -> str:
    """The template filled from one record: `{prompt}` = the prompt field, `{name}` = field `name`."""
    values = {k: "" if v is None else v for k, v in record.items()}
    values.setdefault("prompt", record.get(prompt_field, ""))
    missing = [p for p in placeholders(template) if p and p not in values]
    if missing:
        raise ValueError(f"options.prompt_template: placeholder {{{missing[0]}}} is not a field of the data "
                         f"(fields: {', '.join(sorted(record))}; {{prompt}} is options.prompt_field)")
    if any(p == "" for p in placeholders(template)):
        raise ValueError("options.prompt_template: an empty placeholder {} (name the field: {prompt}, {question})")
    return template.format(**values)


def carve_plan(options: dict) -> tuple[str | None, dict[str, float]]:
    """(pool split, {missing split: fraction or count}): which file the missing splits are carved from."""
    files = options.get("data_files") or {}
    carve = {**{k: v for k, v in DEFAULT_CARVE.items() if k not in files}, **(options.get("carve") or {})}
    for k, v in carve.items():
        if k not in CARVED:
            raise ValueError(f"options.carve.{k}: not a split (train, validation, test)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (isinstance(v, float) and v >= 1):
            raise ValueError(f"options.carve.{k} = {v!r}: a fraction in (0, 1) or a row count >= 1")
    pool = next((s for s in ("train", "test", "validation") if s in files), None)
    return pool, {k: v for k, v in carve.items() if k not in files}


def split_records(options: dict, split: str, required: tuple[str, ...]) -> list[dict]:
    """Records of `split`: its own file, else its carved share of the pool file (the pool keeps the rest)."""
    files = options.get("data_files") or {}
    pool, carve = carve_plan(options)
    if (split in files and not (split == pool and carve)) or pool is None or (split not in carve and split != pool):
        return load_records(options, split, required=required)
    recs = load_records(options, pool, required=required)
    idx = list(range(len(recs)))
    random.Random(options.get("carve_seed", CARVE_SEED)).shuffle(idx)
    start, parts = 0, {}
    for s in CARVED:  # a fixed order: each carved split its slice, the pool the rest
        if s in carve:
            k = carve[s] if isinstance(carve[s], int) else max(1, round(carve[s] * len(recs)))
            parts[s] = idx[start:start + k]
            start += k
    parts[pool] = idx[start:]
    if not parts.get(split):
        raise ValueError(f"no rows for split {split!r}: {len(recs)} rows in the {pool} file, all carved into "
                         f"{', '.join(s for s in parts if s != pool)} (options.carve)")
    return [recs[i] for i in parts[split]]


def gold_choice(value, choices: list[str]) -> int:
    """The gold option of a record: an index (from 0), a letter, or the option's own text. A string
    is first an option's text (options "3", "4": gold "4" is the second), then a letter, then an index."""
    if isinstance(value, bool):
        raise ValueError(f"gold answer {value!r} is not an option index, letter or text")
    texts = [_norm(str(c)) for c in choices]
    v = str(value).strip()
    if isinstance(value, int):
        i = value
    elif _norm(v) in texts:
        i = texts.index(_norm(v))
    elif len(v) == 1 and v.upper() in LETTERS[:len(choices)]:
        i = LETTERS.index(v.upper())
    else:
        i = int(v) if v.isdigit() else -1
    if not 0 <= i < len(choices):
        raise ValueError(f"gold answer {value!r} is not one of the {len(choices)} options (an index from 0, a letter "
                         "or an option's text)")
    return i


def _fields(options: dict) -> tuple[str, str, str]:
    return (options.get("prompt_field", "prompt"), options.get("target_field", "target"),
            options.get("prompt_template", "{prompt}"))


@dataclass(frozen=True)
class Custom(Task):
    name: str = "custom"
    metric: str = "exact"

    def with_options(self, options: dict) -> Task:
        placeholders(options.get("prompt_template", "{prompt}"))
        carve_plan(options)
        files = options.get("data_files") or {}
        # a validation split of its own: a file, or carved from the pool when options.carve names it
        has_val = "validation" in files or ("validation" in (options.get("carve") or {}) and bool(files))
        if options.get("choices_field"):
            return CustomChoice().with_options(options)
        metric = options.get("metric", "exact")
        if metric not in METRICS:
            raise ValueError(f"options.metric {metric!r} is not one of {METRICS}")
        if options.get("scoring", "generate") != "generate":
            raise ValueError("options.scoring: loglik needs options.choices_field (the options it ranks)")
        return replace(self, metric=metric, has_gold=metric != "none", has_validation=has_val)

    def load(self, split, n, seed, options):
        pf, tf, tpl = _fields(options)
        recs = split_records(options, split, (pf,) if self.metric == "none" else (pf, tf))
        if self.metric == "none":  # a record with no text at all (wikitext's empty lines) scores nothing
            recs = [r for r in recs if fill(tpl, r, pf).strip() or str(r.get(tf) or "").strip()]
        rows = []
        for r in sample(recs, n, seed):
            target = "" if r.get(tf) is None else str(r.get(tf))
            rows.append({"prompt": fill(tpl, r, pf), "target": (" " + target) if target else "",
                         "answer": target.strip()})
        return rows

    def score(self, generation, answer, choices=None):
        if self.metric == "contains":
            return float(_norm(answer) in _norm(generation))
        if self.metric == "number":
            return float(flexible_answer(generation) == normalize_number(answer) != "")
        return super().score(generation, answer, choices)


@dataclass(frozen=True)
class CustomChoice(ChoiceTask):
    """custom with `choices_field`: multiple choice in the user's fields, scored as the paper's tasks
    (`scoring: generate` extracts the option the output names; `loglik` ranks the options)."""
    name: str = "custom"

    def with_options(self, options):
        files = options.get("data_files") or {}
        has_val = "validation" in files or ("validation" in (options.get("carve") or {}) and bool(files))
        return replace(super().with_options(options), has_validation=has_val)

    def load(self, split, n, seed, options):
        pf, tf, tpl = _fields(options)
        cf = options["choices_field"]
        rows = []
        for r in sample(split_records(options, split, (pf, tf, cf)), n, seed):
            choices = [str(c) for c in r[cf]]
            if not 2 <= len(choices) <= len(LETTERS):
                raise ValueError(f"field {cf!r}: {len(choices)} options; 2 to {len(LETTERS)} are supported")
            gold = LETTERS[gold_choice(r[tf], choices)]
            rows.append({"prompt": mc_prompt(fill(tpl, r, pf), choices), "target": " " + gold, "answer": gold,
                         "choices": choices})
        return rows
