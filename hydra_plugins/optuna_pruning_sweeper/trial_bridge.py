"""The job's side of the optuna_pruning sweeper: reach this job's own Optuna trial.

The sweeper hands each job two integers through `hydra.job.env_set` (the study's and the trial's ids,
nothing that needs quoting or could be secret); the job opens the storage from its own Hydra config
(hydra.sweeper.storage, exactly as the sweeper did). A task function calls current_trial() and, per
epoch, trial.report(value, step) then trial.should_prune(), exactly as in Optuna's own examples. As it
ends, it may record how on the trial (job_end), for when its sweep cannot tell the study.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from .storage import open_storage

STUDY_ID_ENV = "HYDRA_OPTUNA_STUDY_ID"
TRIAL_ID_ENV = "HYDRA_OPTUNA_TRIAL_ID"
PRUNER_WHITELIST = ("optuna.pruners.*",)
RUN_DIR = "run_dir"  # trial user attr: the job's output directory (see run_dir_attr)
JOB_END = "job_end"  # trial system attr: how the job ended, recorded by the job itself (see job_end)
# The storages this process opened for its jobs, by what names them (opening one costs ~70 ms per job), and
# the studies it loaded, each with the sweep's pruner (one per study and process, as in study.optimize).
_opened: dict[tuple, BaseStorage] = {}
_loaded: dict[tuple, optuna.Study] = {}


def job_environment(study_id: int, trial_id: int) -> tuple[str, ...]:
    """The overrides that hand a job its trial (read back by current_trial)."""
    return (
        f"++hydra.job.env_set.{STUDY_ID_ENV}={study_id}",
        f"++hydra.job.env_set.{TRIAL_ID_ENV}={trial_id}",
    )


def job_end(state: TrialState, values: Sequence[float] = (), reason: str | None = None) -> dict[str, Any]:
    """What a job records on its trial as it ends (system attribute JOB_END): the outcome its sweep tells
    the study from the job's return. A job can end after its sweep's process did (killed while the jobs of
    a batch trained in another process, or while cluster jobs ran); the sweep that then finds the trial
    tells the study this outcome instead of running the trial again (workers.give_up)."""
    return {"state": state.name, "values": [float(v) for v in values], "reason": reason}


def instantiate_pruner(pruner_cfg: object) -> optuna.pruners.BasePruner:
    if pruner_cfg is None:
        return optuna.pruners.NopPruner()
    return instantiate(pruner_cfg, _execution_whitelist_=PRUNER_WHITELIST)


def run_dir_attr(run_dir: Path, project_dir: Path) -> str:
    """A run directory as a trial records it: relative to the directory the sweep was started in when it
    lies inside it (so the path still means something where the study is read from another checkout or
    mount of the project), else absolute."""
    try:
        return str(run_dir.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(run_dir.resolve())


def current_trial() -> optuna.Trial | None:
    """This job's running Optuna trial, with the sweep's pruner; None outside an optuna_pruning sweep.

    Records the job's output directory on the trial at once, so that a trial that never finishes can
    still be found on disk.
    """
    trial_id = os.environ.get(TRIAL_ID_ENV)
    if trial_id is None:
        return None
    hydra_cfg = HydraConfig.get()
    spec = hydra_cfg.sweeper.get("storage")
    where = (str(spec), hydra_cfg.sweep.dir, hydra_cfg.runtime.cwd, hydra_cfg.sweeper.get("grace_period"))
    if where not in _opened:  # one connection per process: jobs of an in-process launcher share it
        _opened[where] = open_storage(
            spec,
            sweep_dir=lambda: Path(hydra_cfg.sweep.dir),
            cwd=Path(hydra_cfg.runtime.cwd),
            grace_period=hydra_cfg.sweeper.get("grace_period"),
            schema_ready=True,  # its sweeper opened the study before it launched this job
        )
    pruner_cfg = hydra_cfg.sweeper.get("pruner")
    study_key = (where, os.environ[STUDY_ID_ENV], str(pruner_cfg))
    if study_key not in _loaded:  # the jobs of a batch, trained in one process, share it
        storage = _opened[where]
        _loaded[study_key] = optuna.load_study(
            study_name=storage.get_study_name_from_id(int(os.environ[STUDY_ID_ENV])),
            storage=storage,
            pruner=instantiate_pruner(pruner_cfg),
        )
    study = _loaded[study_key]
    trial = optuna.Trial(study, int(trial_id))
    trial.set_user_attr(
        RUN_DIR, run_dir_attr(Path(hydra_cfg.runtime.output_dir), Path(hydra_cfg.runtime.cwd))
    )
    return trial
