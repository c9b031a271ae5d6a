"""Which schedule family wins, each tuned: `--multirun hparams_search=schedule_families_optuna`.

Optuna chooses the scheduler config group (hydra.sweeper.params: `scheduler: choice(step_lr, onecycle, ...)`),
then the chosen family's own parameters: a conditional search space, through hydra-optuna-sweeper's
`custom_search_space` hook. Each family's ranges are written in the preset, in the sweeper's own syntax,
under `schedule_families.<option>` (conf/hparams_search/schedule_families_optuna.yaml); a family without
an entry is tried at its YAML defaults.
"""

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from src.runs import FAMILIES_KEY

FAMILY_PARAM = "scheduler"


def family_parameters(config: DictConfig, trial: optuna.Trial) -> None:
    """Suggest the parameters of the family this trial chose (called by the sweeper for each trial)."""
    # The family the trial chose, or the one the command line fixed for the whole sweep (`scheduler=step_lr`)
    fixed = OmegaConf.select(config, f"hydra.runtime.choices.{FAMILY_PARAM}")
    family = trial.params.get(FAMILY_PARAM) or fixed
    space = config.get(FAMILIES_KEY, {}).get(family) or {}
    parser = OverridesParser.create()
    for key, text in space.items():
        distribution = create_optuna_distribution_from_override(parser.parse_override(f"{key}={text}"))
        suggest(trial, key, distribution)


def suggest(trial: optuna.Trial, name: str, distribution: object) -> None:
    if isinstance(distribution, FloatDistribution):
        trial.suggest_float(
            name, distribution.low, distribution.high, log=distribution.log, step=distribution.step
        )
    elif isinstance(distribution, IntDistribution):
        trial.suggest_int(
            name, distribution.low, distribution.high, log=distribution.log, step=distribution.step
        )
    elif isinstance(distribution, CategoricalDistribution):
        trial.suggest_categorical(name, distribution.choices)
    else:
        raise ValueError(f"{FAMILIES_KEY}: {name}={distribution} is not a range or a choice")
