"""Progress lines for long training runs, and the time budget that can end one.

`ProgressLog` writes one line every `train.logging_steps` optimiser steps (step/total, loss,
tokens/s, elapsed, ETA), a line every `logging_steps` batches of a long validation pass, and
each epoch's validation metrics, to the logger it is given: the flow's train task passes
Prefect's run logger (the Prefect log, which Prefect also prints); otherwise it is
`stderr_logger()` (`tuneops stage train`, `dvc repro`). Plain lines, no progress bars (the
Trainer's tqdm bars stay off).

`TimeBudget` stops training at the first optimiser step past `train.max_minutes`; the
Trainer then evaluates and checkpoints the partial epoch, and keeps the best checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from transformers import TrainerCallback

LOGGER_NAME = "tuneops.progress"
TIMINGS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def stderr_logger() -> logging.Logger:
    """The `tuneops.progress` logger, writing plain timestamped lines to stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def duration(seconds: float) -> str:
    """1h02m03s, 4m05s or 6s."""
    whole = max(round(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog(TrainerCallback):
    """Training and validation progress as log lines (see the module docstring)."""

    def __init__(
        self,
        every: int,
        epochs_planned: float,
        budget_s: float | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.every = every
        self.epochs_planned = epochs_planned
        self.budget_s = budget_s
        self.logger = logger or stderr_logger()
        self.started = time.monotonic()
        self.first_step = 0
        self.last = (self.started, 0)  # (time, tokens seen) at the last line
        self.eval_started = self.started

    def _say(self, line: str) -> None:
        self.logger.info(line)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()
        self.first_step = state.global_step  # > 0 when resumed from a checkpoint
        self.last = (self.started, state.num_input_tokens_seen)
        resumed = f", resumed at step {state.global_step}" if state.global_step else ""
        self._say(
            f"training: {state.max_steps} steps at most ({_epochs(self.epochs_planned)} epochs"
            f"{resumed}); a line every {self.every} steps"
        )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        if "loss" not in logs:
            return
        now = time.monotonic()
        tokens = state.num_input_tokens_seen
        then, tokens_then = self.last
        rate = (tokens - tokens_then) / (now - then) if now > then else 0.0
        self.last = (now, tokens)
        elapsed = now - self.started
        done = state.global_step - self.first_step
        eta = (state.max_steps - state.global_step) * elapsed / done if done else 0.0
        if self.budget_s is not None:
            eta = min(eta, max(self.budget_s - elapsed, 0.0))
        self._say(
            f"train step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f}/"
            f"{_epochs(self.epochs_planned)}): loss {logs['loss']:.4f}, {rate:,.0f} tokens/s, "
            f"elapsed {duration(elapsed)}, ETA {duration(eta)}"
        )

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loader = kwargs.get("eval_dataloader")
        total = len(loader) if loader is not None and hasattr(loader, "__len__") else None
        self._batch = getattr(self, "_batch", 0) + 1
        if self._batch == 1:
            self.eval_started = time.monotonic()
        if total and total > self.every and self._batch % self.every == 0:
            spent = time.monotonic() - self.eval_started
            eta = (total - self._batch) * spent / self._batch
            self._say(
                f"validation batch {self._batch}/{total}: elapsed {duration(spent)}, "
                f"ETA {duration(eta)}"
            )

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        self._batch = 0
        shown = ", ".join(
            f"{k.removeprefix('eval_')} {v:.4f}"
            for k, v in sorted((metrics or {}).items())
            if k.startswith("eval_") and k not in TIMINGS and isinstance(v, int | float)
        )
        self._say(
            f"epoch {state.epoch:.2f}/{_epochs(self.epochs_planned)} validation: {shown} "
            f"(step {state.global_step}, elapsed {duration(time.monotonic() - self.started)})"
        )


def _epochs(value: float) -> str:
    return f"{value:g}"


class TimeBudget(TrainerCallback):
    """Stop at the first optimiser step after `minutes` of training in this process."""

    def __init__(self, minutes: float) -> None:
        self.budget_s = minutes * 60.0
        self.started = time.monotonic()
        self.spent = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if time.monotonic() - self.started >= self.budget_s:
            self.spent = True
            control.should_training_stop = True
