"""python -m src.train [overrides]: one training run, or under --multirun one job of a sweep.

The config is checked before torch is imported: a bad value fails in a fraction of a second, and the
parent process of a joblib sweep (which only runs the sweeper) never loads torch. The run's or the
sweep's config is checked even before Hydra writes anything (src.callbacks.CheckConfigFirst); each
job's, with the values its sweeper chose, here.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.config import EXECUTION_WHITELIST, validate
from src.errors import TrainingDiverged, UserInputError
from src.fast_exit import run_then_exit


@hydra.main(config_path="../conf", config_name="train", execution_whitelist=EXECUTION_WHITELIST)
def main(cfg: DictConfig) -> float:
    try:
        validate(cfg)
        from src.run import train

        return train(cfg)
    except (UserInputError, TrainingDiverged) as error:
        if HydraConfig.get().mode == RunMode.RUN:
            # A single run: one clear line and a non-zero exit instead of a traceback.
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2 if isinstance(error, UserInputError) else 1)
        raise  # in a sweep, the sweeper records the job as failed and goes on


if __name__ == "__main__":
    run_then_exit(main)
