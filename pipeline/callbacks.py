"""Observers of a fine-tuning run (`pipeline.train.Finetune`): the loop calls `on_learn_step` after
every learning step and `on_event_end` after every event (and after the checkpoint it may write)."""
from __future__ import annotations


class Callback:
    """Observes a run (a `pipeline.train.Finetune`)."""

    def on_learn_step(self, run, step: int) -> None:
        pass

    def on_event_end(self, run) -> None:
        pass


class StopAfter(Callback):
    """Interrupts the run (KeyboardInterrupt, as Ctrl-C would) after `n` events: the resume tests'
    simulated crash. The loop saves the checkpoint before the interrupt leaves it."""

    def __init__(self, n: int):
        self.n = n

    def on_event_end(self, run) -> None:
        if run.state.event >= self.n:
            raise KeyboardInterrupt(f"simulated crash after {run.state.event} events")


class OnLearnStep(Callback):
    """Calls `fn(model, step)` after every learning step (learning curves, calibration)."""

    def __init__(self, fn):
        self.fn = fn

    def on_learn_step(self, run, step: int) -> None:
        self.fn(run.model, step)
