"""When a fine-tuning run learns and unlearns: the ordered events of a run (`build_schedule`) and its
number of learning steps (`learning_steps`), from the learning recipe and the method."""
from __future__ import annotations


def build_schedule(max_steps: int, unlearn_every: int, schedule: str, joint: bool = False) -> list[str]:
    """The ordered events of a run: 'learn', 'unlearn' (a step of its own) and, with `joint`,
    'joint' (a learning step that also carries the unlearning term)."""
    if schedule == "none":
        return ["learn"] * max_steps
    if schedule == "early":
        if joint:
            raise ValueError("unlearn 'early' has no learning step to join under unlearn_optimizer 'joint'")
        return ["unlearn"] * (max_steps // unlearn_every) + ["learn"] * max_steps
    if schedule == "periodic":
        events = []
        for s in range(1, max_steps + 1):
            due = s % unlearn_every == 0
            events.append("joint" if due and joint else "learn")
            if due and not joint:
                events.append("unlearn")
        return events
    raise ValueError(f"unknown unlearning schedule {schedule!r}")


def learning_steps(cfg, method) -> int:
    """`max_steps`, plus one per scheduled unlearning step for a method with `match_steps`
    (vanilla_matched) when unlearning takes optimizer steps of its own."""
    extra = cfg.max_steps // method.unlearn_every if method.match_steps and method.unlearn_optimizer != "joint" else 0
    return cfg.max_steps + extra
