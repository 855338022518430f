"""The task registry: the one place on the training side that names a task.

`get(name)` returns the task object the steps call (see base.Task). A new task is a new
module here and one line in TASKS (docs/architecture.md, "How to add a task").
"""

from __future__ import annotations

from pipeline.tasks.base import Task
from pipeline.tasks.intent_and_slots import IntentAndSlots
from pipeline.tasks.text_classification import TextClassification
from pipeline.tasks.text_regression import TextRegression
from pipeline.tasks.token_classification import TokenClassification
from tuneops.errors import ConfigError

TASKS: dict[str, Task] = {
    "text-classification": TextClassification(),
    "token-classification": TokenClassification(),
    "text-regression": TextRegression(),
    "intent-and-slots": IntentAndSlots(),
}


def get(name: str) -> Task:
    """The task called `name` (params.yaml `task`); ConfigError naming the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task: unknown task {name!r}; expected one of {sorted(TASKS)}") from None


__all__ = ["TASKS", "Task", "get"]
