"""Hydra callbacks of this app, registered under hydra.callbacks in conf/train.yaml.

Hydra creates a run's output directory (and writes .hydra/ into it) before it calls the task
function, so a check inside src.train.main comes too late to leave the disk alone: a typo would
leave an empty run directory behind, or overwrite the .hydra/ of the existing run it was pointed
at. This callback checks the config first.
"""

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.config import validate
from src.errors import UserInputError


class CheckConfigFirst(Callback):
    """Check the composed config before Hydra writes anything.

    A bad value stops a run, or a whole sweep (any sweeper, any launcher), with one line on stderr and
    exit code 2. In a sweep this is the sweep's own config (fixed values applied, swept keys at their
    defaults); what the sweeper chooses for each job is checked by the job (src.train.main). Hydra
    turns a callback's exceptions into warnings, so the stop is a SystemExit.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        try:
            validate(config)
        except UserInputError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
