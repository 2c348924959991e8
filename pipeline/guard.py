"""The unlearning guard: decides, at every unlearning step, whether unlearning goes on.

`methods.<m>.guard` says what it watches:

    graceful  (default) what unlearning must not damage: the mean NLL of a fixed batch of guard rows
              (the finetune stage passes learning-task training rows and general-text training
              rows; from a script, `guard_rows`, else the first learning rows). It is measured just
              before and just after every unlearning step; a step that raises the guard rows'
              perplexity, exp(mean NLL), by more than `guard_max_rise` (0.1 = +10%, i.e. the NLL by
              more than ln 1.1 = 0.095 nats) is undone (the trainable weights are put back) and
              unlearning stops for the rest of the run. `guard_max_total_rise` (off when null) bounds
              the rises of all the steps taken together the same way (their NLL rises summed), so
              many small steps cannot add up to a large one. Learning steps between unlearning steps
              never count against it: only the unlearning steps' own effect does. (A perplexity
              ratio, not the NLL's relative rise: on rows the run has nearly fit, NLL 0.1, a rise
              of 0.02 nats is +20% of the NLL but +2% of the perplexity.)
              (Under `unlearn_optimizer: joint` the unlearning term rides on a learning step: the
              rise of that step is checked, and unlearning stops without undoing it.)
    absolute  the D_U batch's own NLL against `unlearn_max_loss`, checked before the step (a step on a
              batch above the bound is not taken, and unlearning stops)
    none      only a non-finite D_U NLL stops unlearning

Every guard stops on a non-finite NLL. Every decision is kept (`Guard.record`: the figures of each
check, why and when it stopped) and logged; `stats()` goes into train_stats.json and the report.
"""
from __future__ import annotations

import logging
import math

import torch

from . import dist
from .config import GUARDS  # noqa: F401  (the params option list, defined once)
from .data import collate, forward_token_nll, n_target_tokens
from .step import row_losses

log = logging.getLogger("lwf")
GUARD_BATCH = 16  # rows per forward of a guard check (the default guard: 16 learning + 16 general-text rows)


class Guard:
    def __init__(self, method, encs: list, rows: list[dict], pad_id: int, run_id: str = ""):
        self.kind, self.max_rise, self.max_loss = method.guard, method.guard_max_rise, method.unlearn_max_loss
        self.max_total_rise = method.guard_max_total_rise
        self.encs, self.rows, self.pad_id, self.run_id = encs, rows, pad_id, run_id
        self.checks: list[dict] = []  # one per unlearning step: step, d_u_nll, before, after, rise, total_rise
        self.stopped_at: int | None = None
        self.reason: str | None = None

    # -- what the loop asks ---------------------------------------------------------------------

    def allows(self, step: int, d_u_nll: float) -> bool:
        """Before an unlearning step on a batch whose NLL is `d_u_nll`: may it be taken?"""
        if not math.isfinite(d_u_nll):
            return self._stop(step, f"the D_U batch NLL is {d_u_nll}")
        if self.kind == "absolute" and d_u_nll > self.max_loss:
            return self._stop(step, f"the D_U batch NLL {d_u_nll:.4g} is above unlearn_max_loss {self.max_loss:g}")
        self.checks.append({"step": step, "d_u_nll": d_u_nll})
        return True

    def watching(self) -> bool:
        return self.kind == "graceful"

    def accepts(self, step: int, before: float, after: float) -> bool:
        """After an unlearning step (graceful only): was its damage to the guard rows within bounds?
        `rise`: the step's perplexity ratio minus 1; `total_rise`: that of every step taken so far with this one."""
        taken = sum(c["after"] - c["before"] for c in self.checks[:-1] if "after" in c)  # steps accepted so far
        rise, total = _ppl_rise(after - before), _ppl_rise(taken + after - before)
        self.checks[-1].update(before=before, after=after, rise=rise, total_rise=total)
        total_ok = self.max_total_rise is None or total <= self.max_total_rise
        if math.isfinite(after) and rise <= self.max_rise and total_ok:
            log.info("stage finetune: %s guard at learning step %d: guard-row NLL %.4f -> %.4f (perplexity %+.1f%%, "
                     "bound +%.0f%%; all steps %+.1f%%): unlearning goes on", self.run_id, step, before, after,
                     100 * rise, 100 * self.max_rise, 100 * total)
            return True
        if math.isfinite(after) and rise <= self.max_rise:
            return self._stop(step, f"the unlearning steps together raised the guard rows' perplexity by {100 * total:+.1f}% "
                                    f"(NLL {before:.4g} -> {after:.4g} at this one; bound +{100 * self.max_total_rise:.0f}%)")
        return self._stop(step, f"the unlearning step raised the guard rows' NLL from {before:.4g} to {after:.4g} "
                                f"(perplexity {100 * rise:+.1f}%, bound +{100 * self.max_rise:.0f}%)")

    @torch.no_grad()
    def nll(self, model, device) -> float:
        """Mean over the guard rows of each row's mean target-token NLL (all processes together).
        Rows go in batches of `GUARD_BATCH` ordered by their number of target tokens, so a row that
        scores one label word is not padded to a general-text row's logits (over a large vocabulary
        the output layer at the padded positions was about a third of a check's time on SmolLM2)."""
        mine, n_real = dist.shard_even(list(range(len(self.encs))))  # every rank as many forwards (FSDP)
        rows = sorted(((i, k < n_real) for k, i in enumerate(mine)), key=lambda r: n_target_tokens(self.encs[r[0]]))
        total = torch.zeros((), dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()
        for start in range(0, len(rows), GUARD_BATCH):
            chunk = rows[start:start + GUARD_BATCH]
            batch = collate([self.encs[i] for i, _ in chunk], self.pad_id, device)
            nll, mask, _ = forward_token_nll(model, batch)
            real = torch.tensor([r for _, r in chunk], device=device)  # the padding copies are not summed
            total += row_losses(nll, mask)[real].double().sum()
        model.train(was_training)
        dist.reshard(model)  # no backward follows (and an undo may change the shards): FSDP drops its gathered copies
        return (dist.all_reduce_sum_(total) / max(1, len(self.encs))).item()

    # -- the record -------------------------------------------------------------------------------

    def _stop(self, step: int, reason: str) -> bool:
        self.stopped_at, self.reason = step, reason
        log.warning("stage finetune: %s unlearning stopped at learning step %d: %s", self.run_id, step, reason)
        return False

    def state(self) -> dict:
        return {"checks": self.checks, "stopped_at": self.stopped_at, "reason": self.reason}

    def load_state(self, s: dict) -> None:
        self.checks, self.stopped_at, self.reason = s["checks"], s["stopped_at"], s["reason"]

    def stats(self) -> dict:
        rises = [c["rise"] for c in self.checks if "rise" in c]
        kept = [c["total_rise"] for c in self.checks if "total_rise" in c and c["step"] != self.stopped_at]
        graceful = self.kind == "graceful"
        return {"kind": self.kind, "max_rise": self.max_rise if graceful else None,
                "max_total_rise": self.max_total_rise if graceful else None,
                "max_loss": self.max_loss if self.kind == "absolute" else None,
                "checks": len(self.checks), "largest_ppl_rise": max(rises) if rises else None,
                "total_ppl_rise": kept[-1] if kept else (0.0 if rises else None),
                "stopped_at": self.stopped_at, "reason": self.reason}


def _ppl_rise(nll_rise: float) -> float:
    """The perplexity ratio minus 1 of a rise of the mean NLL (nats): exp(rise) - 1."""
    return math.expm1(nll_rise) if nll_rise < 700 else math.inf
