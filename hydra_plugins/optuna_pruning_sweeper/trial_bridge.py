"""The job's side of the optuna_pruning sweeper: reach this job's own Optuna trial.

The sweeper sets three environment variables for each job it launches (through
hydra.job.env_set); a task function calls current_trial() and, per epoch, trial.report(value, step)
then trial.should_prune(), exactly as in Optuna's own examples.
"""

import os

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

STORAGE_ENV = "HYDRA_OPTUNA_STORAGE"
STUDY_ENV = "HYDRA_OPTUNA_STUDY"
TRIAL_ENV = "HYDRA_OPTUNA_TRIAL_NUMBER"
PRUNER_WHITELIST = ("optuna.pruners.*",)


def job_environment(storage: str, study_name: str, trial_number: int) -> tuple[str, ...]:
    """The overrides that hand a job its trial (read back by current_trial)."""
    return (
        f"++hydra.job.env_set.{STORAGE_ENV}='{storage}'",
        f"++hydra.job.env_set.{STUDY_ENV}='{study_name}'",
        f"++hydra.job.env_set.{TRIAL_ENV}={trial_number}",
    )


def instantiate_pruner(pruner_cfg: object) -> optuna.pruners.BasePruner:
    if pruner_cfg is None:
        return optuna.pruners.NopPruner()
    return instantiate(pruner_cfg, _execution_whitelist_=PRUNER_WHITELIST)


def current_trial() -> optuna.Trial | None:
    """This job's running Optuna trial, with the sweep's pruner; None outside an optuna_pruning sweep."""
    trial_number = os.environ.get(TRIAL_ENV)
    if trial_number is None:
        return None
    sweeper_cfg = HydraConfig.get().sweeper
    study = optuna.load_study(
        study_name=os.environ[STUDY_ENV],
        storage=os.environ[STORAGE_ENV],
        pruner=instantiate_pruner(sweeper_cfg.get("pruner")),
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(trial_number))
    return optuna.Trial(study, trial_id)
