"""Errors caused by what the user asked for: reported as one line, never as a traceback."""


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
