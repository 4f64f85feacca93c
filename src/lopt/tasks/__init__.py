"""Inner problems: tasks, task families and the registry (``get``, ``names``).

``lopt.tasks.get(name)`` returns a :class:`Task`, a :class:`TaskFamily` or a
:class:`TaskMixture`; ``lopt.tasks.names()`` lists what is registered and
``lopt.tasks.describe(name)`` gives the one-line description shown by ``lopt tasks``.
"""

from lopt.tasks.base import (
    FixedTaskFamily,
    Task,
    TaskFamily,
    TaskMixture,
    as_groups,
    clip_meta_loss,
    sample_task,
)
from lopt.tasks.registry import describe, get, names

__all__ = [
    "FixedTaskFamily",
    "Task",
    "TaskFamily",
    "TaskMixture",
    "as_groups",
    "clip_meta_loss",
    "describe",
    "get",
    "names",
    "sample_task",
]
