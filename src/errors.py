"""Errors caused by what the user asked for: reported as one line, never as a traceback."""

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class UserInputError(Exception):
    """A bad config value or bad input files; the message names what is wrong and what is allowed."""


class ConfigError(UserInputError):
    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
        self.key = key


class DataError(UserInputError):
    """MNIST files that are missing, truncated or corrupt."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops at once."""


class TimeLimitReached(RuntimeError):
    """The job's cluster time limit is about to end it: it stops, failed, with its files written."""


def time_limit_reached(error: BaseException) -> TimeLimitReached | None:
    """submitit's UncompletedJobError, raised in a SLURM job by the signal it gets signal_delay_s before its
    time limit (the run has no checkpoint to be requeued from), as what it means; its own words were "Job not
    requeued because: timed-out too many times"."""
    kind = type(error)
    if kind.__name__ != "UncompletedJobError" or not kind.__module__.startswith("submitit"):
        return None
    return TimeLimitReached(
        "the job's SLURM time limit (hydra.launcher.timeout_min) is about to end it: submitit stopped it "
        "hydra.launcher.signal_delay_s before"
    )


def is_disk_full(error: BaseException) -> bool:
    """A write refused for want of space (or of the user's quota)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def class_arguments(group: str, target: str) -> Iterator[None]:
    """torch's own check of a class's arguments (SGD's momentum=-1, OneCycleLR's pct_start=2, an argument the
    class does not take) as one line naming the group and the class, instead of a traceback from inside the
    run: a single run then stops before training, a sweep's trial fails with this as its reason."""
    from hydra.errors import InstantiationException

    try:
        yield
    except (InstantiationException, TypeError, ValueError) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if not isinstance(cause, TypeError | ValueError):
            raise
        raise UserInputError(f"{group}: {target} refused its arguments: {cause}") from error
