"""Tasks (``task.name``): what a federation trains and how it is scored.

Each task is registered in :data:`TASKS` with its reference; importing this
package registers them all.
"""

from fedelta.common.tasks.registry import TASKS, Evaluation, Task, task_for
from fedelta.common.tasks import causal_lm, classification  # noqa: F401  (registration)

__all__ = ["TASKS", "Evaluation", "Task", "task_for"]
