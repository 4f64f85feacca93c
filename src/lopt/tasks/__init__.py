"""Inner problems: tasks, task families and the registry (``get``, ``names``)."""

from lopt.tasks.base import (
    FixedTaskFamily,
    Task,
    TaskFamily,
    TaskMixture,
    as_groups,
    clip_meta_loss,
)

__all__ = [
    "FixedTaskFamily",
    "Task",
    "TaskFamily",
    "TaskMixture",
    "as_groups",
    "clip_meta_loss",
]
