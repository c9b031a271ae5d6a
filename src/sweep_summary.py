"""What this app's trials recorded, summed up after an optuna_pruning sweep (the sweeper plugin knows only
Optuna's side: states, values, parameters, run directories).

Each trial records its epochs (run, planned, reused from shared epochs) and its test accuracy on its Optuna
trial (src/run.py). After the sweep, the epochs run, shared and saved by pruning are logged and added to the
sweep's optimization_results.yaml, with the best trial's test accuracy (reported, never used to choose).
"""

import logging
from pathlib import Path
from typing import Any

import optuna
import yaml
from omegaconf import DictConfig
from optuna.trial import TrialState

from hydra_plugins.optuna_pruning_sweeper.storage import open_storage
from hydra_plugins.optuna_pruning_sweeper.sweep_owner import RESULTS_FILE  # the sweeper's; keys added here
from hydra_plugins.optuna_pruning_sweeper.sweeper import counts_toward_n_trials
from src.atomic_files import write_text_atomically
from src.run_record import Summary

log = logging.getLogger(__name__)


def epochs_summary(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    return {
        "epochs_used": sum(t.user_attrs.get(Summary.EPOCHS_COMPLETED, 0) for t in trials),
        "epochs_reused": sum(t.user_attrs.get(Summary.EPOCHS_REUSED, 0) for t in trials),
        "epochs_saved_by_pruning": sum(
            t.user_attrs.get(Summary.EPOCHS_PLANNED, 0) - t.user_attrs.get(Summary.EPOCHS_COMPLETED, 0)
            for t in pruned
        ),
        "trials_pruned": len(pruned),
    }


def summarize_sweep(config: DictConfig) -> None:
    sweeper, sweep_dir = config.hydra.sweeper, Path(config.hydra.sweep.dir)
    results_path = sweep_dir / RESULTS_FILE
    # Hydra calls this even when the sweep stopped before its end, as it does when refused a directory
    # that holds another study's results.
    results = yaml.safe_load(results_path.read_text()) if results_path.is_file() else None
    if not isinstance(results, dict) or results.get("study_name") != sweeper.study_name:
        return
    try:
        storage = open_storage(
            sweeper.get("storage"),
            sweep_dir=lambda: sweep_dir,
            cwd=Path(config.hydra.runtime.cwd),
            grace_period=sweeper.get("grace_period"),
            schema_ready=True,  # by the sweeper, which wrote the results file
        )
        study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
    except Exception as error:  # a storage gone since: the sweeper's own summary stands
        log.warning("the trials' epochs are not summed up: %s", error)
        return
    trials = [t for t in study.get_trials(deepcopy=False) if counts_toward_n_trials(t)]
    summary: dict[str, Any] = epochs_summary(trials)
    if summary["trials_pruned"]:
        log.info(
            f"Pruning stopped {summary['trials_pruned']} trials early and saved "
            f"{summary['epochs_saved_by_pruning']} epochs"
        )
    if summary["epochs_reused"]:
        log.info(
            f"Trials reused {summary['epochs_reused']} of their {summary['epochs_used']} epochs "
            "from earlier trials instead of training them"
        )
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed and len(study.directions) == 1:
        best = study.best_trial
        if (test := best.user_attrs.get(Summary.TEST_ACC)) is not None:
            summary["best_test_acc"] = test
            log.info(f"  test accuracy of trial {best.number}: {test:.4g} (reported, never used to choose)")
    write_text_atomically(results_path, yaml.safe_dump({**results, **summary}, sort_keys=False))
