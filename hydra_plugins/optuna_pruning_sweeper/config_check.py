"""A task function's config check, run once by the optuna_pruning sweeper before any trial.

Kept free of optuna and torch imports: the task's module imports it at start-up.
"""

from collections.abc import Callable
from typing import Any

CONFIG_CHECK_ATTRIBUTE = "sweep_config_check"


def checks_config_with(check: Callable[[Any], None]) -> Callable[[Callable], Callable]:
    """Mark a task function (under @hydra.main) with a config check for the sweeper to run up front.

    Before it opens the study, the sweeper calls check(config) once on the sweep's own config: the
    command line's fixed values applied, searched keys at their defaults. A bad fixed value would fail
    every trial; instead the sweep stops with the check's message as one line, and no trial is recorded.
    """

    def mark(task_function: Callable) -> Callable:
        setattr(task_function, CONFIG_CHECK_ATTRIBUTE, check)
        return task_function

    return mark
