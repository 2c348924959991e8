"""The embedded negative-transfer lab: a synthetic world small enough for 2 CPU cores.

People have four-letter names `c1 v1 c2 v2` (consonants from CONS, vowels from VOWELS) and
live in one of eight cities. Two *rules* for "where does X live" compete on the same prompt:

- learning task `lab_learn`:   the city is fixed by the FIRST consonant  (c1 -> CITY_BY_FIRST)
- conflict task `lab_conflict`: the city is fixed by the THIRD letter     (c2 -> CITY_BY_THIRD)

The base model is pretrained on the conflict rule (like a widespread misconception), so its
self-knowledge on "X lives in" is the wrong rule: same prompt form, different answers, and no
shared skill beyond the format. `lab_neutral` (two-number sums, digits only) shares nothing with
the learning task and is only partly known by the base model; `lab_count` (after n comes
n+1) is a neutral task it knows well; `lab_general` is templated prose for the perplexity check. All name / number
pools are disjoint across pretraining, learning train/test and forgetting prompts/test, so no
score is computed on anything a model was trained on. `lab_learn` also has a `validation` split
(its own pool): the lab's step budget was calibrated on it, never on `test`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from .base import Task

CONS = "bdgklmnt"
VOWELS = "aeiou"
CITIES = ("rome", "oslo", "lima", "kyiv", "baku", "doha", "riga", "bern")
CITY_BY_FIRST = dict(zip(CONS, CITIES))
CITY_BY_THIRD = dict(zip(CONS, CITIES[3:] + CITIES[:3]))  # a different table: conflicts everywhere
WORLD_SEED = 20250519

# disjoint pools of names, fixed once for the whole lab
_POOLS = ("pretrain", "learn_train", "learn_validation", "learn_test", "forget_train", "forget_test")


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    names = [a + b + c + d for a in CONS for b in VOWELS for c in CONS for d in VOWELS]
    random.Random(WORLD_SEED).shuffle(names)
    return tuple(names)


@lru_cache(maxsize=None)
def name_pool(pool: str) -> tuple[str, ...]:
    names = _names()
    size = len(names) // len(_POOLS)
    i = _POOLS.index(pool)
    return names[i * size:(i + 1) * size]


@lru_cache(maxsize=1)
def _sums() -> tuple[tuple[int, int], ...]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10)]
    random.Random(WORLD_SEED + 1).shuffle(pairs)
    return tuple(pairs)


@lru_cache(maxsize=None)
def sum_pool(pool: str) -> tuple[tuple[int, int], ...]:
    pairs = _sums()
    third = len(pairs) // 3
    i = {"pretrain": 0, "forget_train": 1, "forget_test": 2}[pool]
    return pairs[i * third:(i + 1) * third]


@lru_cache(maxsize=None)
def count_pool(pool: str) -> tuple[int, ...]:
    nums = list(range(100, 1000))
    random.Random(WORLD_SEED + 2).shuffle(nums)
    third = len(nums) // 3
    i = {"pretrain": 0, "forget_train": 1, "forget_test": 2}[pool]
    return tuple(nums[i * third:(i + 1) * third])


def lives_prompt(name: str) -> str:
    return f"{name} lives in"


def _take(pool: list, n: int, seed: int) -> list:
    if n > len(pool):
        raise ValueError(f"lab pool has {len(pool)} items, {n} were asked for")
    rng = random.Random(seed)
    return rng.sample(pool, n)


@dataclass(frozen=True)
class LabLearn(Task):
    name: str = "lab_learn"
    has_validation: bool = True  # its own pool, learn_validation

    def load(self, split, n, seed, options):
        pool = name_pool(f"learn_{split}")
        return [
            {"prompt": lives_prompt(x), "target": " " + CITY_BY_FIRST[x[0]], "answer": CITY_BY_FIRST[x[0]]}
            for x in _take(pool, n, seed)
        ]


@dataclass(frozen=True)
class LabConflict(Task):
    name: str = "lab_conflict"

    def load(self, split, n, seed, options):
        pool = name_pool("forget_train" if split == "train" else "forget_test")
        return [conflict_row(x) for x in _take(pool, n, seed)]


def conflict_row(name: str) -> dict:
    city = CITY_BY_THIRD[name[2]]
    return {"prompt": lives_prompt(name), "target": " " + city, "answer": city}


def neutral_row(a: int, b: int) -> dict:
    return {"prompt": f"{a}+{b}=", "target": str(a + b), "answer": str(a + b)}


def count_row(n: int) -> dict:
    return {"prompt": f"after {n} comes", "target": f" {n + 1}", "answer": str(n + 1)}


@dataclass(frozen=True)
class LabCount(Task):
    """A second neutral task that the base model knows well (counting): no skill shared with the
    learning task, and confident self-knowledge (small per-sample gradients), unlike lab_neutral."""
    name: str = "lab_count"

    def load(self, split, n, seed, options):
        pool = count_pool("forget_train" if split == "train" else "forget_test")
        return [count_row(x) for x in _take(pool, n, seed)]


@dataclass(frozen=True)
class LabNeutral(Task):
    name: str = "lab_neutral"

    def load(self, split, n, seed, options):
        pool = sum_pool("forget_train" if split == "train" else "forget_test")
        return [neutral_row(a, b) for a, b in _take(pool, n, seed)]


_ADJ = ("old", "red", "quiet", "small", "happy", "green", "tall", "brave", "slow", "warm")
_NOUN = ("cat", "dog", "bird", "farmer", "river", "teacher", "boat", "garden", "child", "horse")
_VERB = ("sees", "likes", "follows", "paints", "finds", "helps", "watches", "carries", "meets", "hears")
_PLACE = ("near the hill", "by the sea", "in the park", "at the market", "under the bridge", "on the road")


def general_sentence(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return f"the {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} the {rng.choice(_NOUN)} {rng.choice(_PLACE)}."
    if form == 1:
        a, b = rng.sample(CITIES, 2)
        return f"the {rng.choice(_NOUN)} went from {a} to {b} with a {rng.choice(_ADJ)} {rng.choice(_NOUN)}."
    if form == 2:
        x, y = rng.choice(name_pool("pretrain")), rng.choice(name_pool("pretrain"))
        return f"{x} {rng.choice(_VERB)} {y} {rng.choice(_PLACE)}."
    return f"one {rng.choice(_ADJ)} {rng.choice(_NOUN)} is {rng.choice(_PLACE)}."


@dataclass(frozen=True)
class LabGeneral(Task):
    name: str = "lab_general"
    has_gold: bool = False

    def load(self, split, n, seed, options):
        rng = random.Random(seed * 7 + (0 if split == "train" else 1_000_003))
        return [{"prompt": "", "target": general_sentence(rng), "answer": ""} for _ in range(n)]


def pretrain_corpus(n: int, seed: int, conflict_weight: float, conflict_noise: float = 0.0) -> list[str]:
    """Texts for pretraining the lab base model: conflict facts, neutral sums and prose.

    `conflict_weight=0` gives the control corpus (no conflicting knowledge): the other parts keep
    their relative shares. `conflict_noise`: the share of conflict facts whose city is drawn at
    random instead of by the third-letter rule, so the base model holds the misconception firmly
    but not at probability 1 (its gradients on it are then not ~0).
    """
    rng = random.Random(seed)
    names, sums, counts = name_pool("pretrain"), sum_pool("pretrain"), count_pool("pretrain")
    rest = 1.0 - conflict_weight
    out = []
    for _ in range(n):
        u = rng.random()
        if u < conflict_weight:
            r = conflict_row(rng.choice(names))
            if conflict_noise and rng.random() < conflict_noise:
                r = {**r, "target": " " + rng.choice(CITIES)}
        elif u < conflict_weight + rest * 0.3:
            r = neutral_row(*rng.choice(sums))
        elif u < conflict_weight + rest * 0.5:
            r = count_row(rng.choice(counts))
        else:
            r = {"prompt": "", "target": general_sentence(rng)}
        out.append(r["prompt"] + r["target"])
    return out

