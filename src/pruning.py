"""From which epoch a sweep's pruner may stop a run (the `prune_from` setting).

Every epoch's validation accuracy is reported to the run's Optuna trial; this decides when
trial.should_prune() is first asked. In a search over the scheduler's arguments alone (StepLR's
step_size and gamma), every trial trains exactly like every other until its learning rate first
leaves lr0: a pruner asked before then judges nothing about the trial but how late it decays, and
stops the late decays, which are the best schedules (short-horizon bias). Once the search covers
anything else (lr0, the model, the optimizer), trials differ from the first epoch on.
"""

from collections.abc import Iterable

PRUNE_FROM = ("auto", "first_epoch", "first_decay")


SCHEDULE_PARAMS = ("scheduler", "steps")  # the scheduler group (its choice too) and the run's warmup length


def searches_beyond_the_schedule(searched_params: Iterable[str]) -> bool:
    """Whether trials with these searched parameters can differ before their first decay."""
    return any(name.split(".", 1)[0] not in SCHEDULE_PARAMS for name in searched_params)


def first_prunable_epoch(prune_from: str, constant_lr_epochs: int, searched_params: Iterable[str]) -> int:
    """The first epoch after which the pruner is asked; constant_lr_epochs: the run's epochs at lr0.

    auto: first_epoch when the search covers more than the scheduler's arguments, else first_decay.
    """
    if prune_from == "auto":
        prune_from = "first_epoch" if searches_beyond_the_schedule(searched_params) else "first_decay"
    return 1 if prune_from == "first_epoch" else constant_lr_epochs + 1
