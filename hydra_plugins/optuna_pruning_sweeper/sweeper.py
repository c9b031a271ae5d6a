"""hydra-optuna-sweeper, extended: pruning, resumable studies, failed trials that don't end a sweep.

The upstream OptunaSweeperImpl provides the search space (parsing of hydra.sweeper.params and
the command line), trial configuration, the grid sampler's choices and the launcher. Its sweep()
loop is replaced here because it can only tell a trial COMPLETE or FAIL and counts n_trials per
invocation; this loop

- hands each job its trial (trial_bridge) so the task can report per epoch and be PRUNED;
- counts n_trials over the whole (persistent) study, so rerunning a killed sweep continues it:
  trials left RUNNING by the dead sweep are marked FAIL (`interrupted`) and their parameters are
  queued again;
- records failed trials with their reason and goes on, until failures exceed
  max_failure_rate x n_trials;
- ends with a summary and optimization_results.yaml.
"""

import functools
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from . import config  # noqa: F401  (registers the configs)
from .trial_bridge import instantiate_pruner, job_environment

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
FAIL_REASON = "fail_reason"
SQLITE_PREFIX = "sqlite:///"
SWEEP_SETTINGS = "sweep_settings"


def absolute_storage(storage: str) -> str:
    """An SQLite URL with an absolute path (its directory created); other URLs unchanged."""
    if not storage.startswith(SQLITE_PREFIX):
        return storage
    path = Path(storage[len(SQLITE_PREFIX) :]).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE_PREFIX}{path}"


def tell(study: optuna.Study, trial: optuna.Trial | int, **outcome: Any) -> None:
    """study.tell(), where the GridSampler's end-of-grid study.stop() (an error outside optimize()) is
    harmless: the trial is stored before it is raised."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def search_space_overrides(params: DictConfig | None) -> list[str]:
    """hydra.sweeper.params as `key=value` overrides: nested keys joined with dots, so that
    `scheduler: {gamma: ...}` and upstream's flat `scheduler.gamma: ...` mean the same."""

    def flatten(prefix: str, node: Any) -> list[str]:
        if isinstance(node, DictConfig):
            return [line for key, value in node.items() for line in flatten(f"{prefix}{key}.", value)]
        return [f"{prefix[:-1]}={node}"]

    return flatten("", params) if params else []


def sweep_settings(
    distributions: dict[str, BaseDistribution], fixed_params: dict[str, Any], fixed_overrides: list[str]
) -> dict[str, Any]:
    """What makes the trials of a study comparable: the search space and the fixed task overrides
    (hydra.* settings such as n_trials, the launcher or the pruner may change between invocations)."""
    return {
        "search_space": {name: distribution_to_json(d) for name, d in sorted(distributions.items())},
        "fixed": sorted([f"{name}={value}" for name, value in fixed_params.items()] + list(fixed_overrides)),
    }


class SweepError(CompactHydraException):
    """A sweep that cannot go on; Hydra prints the message as one line, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def check_same_sweep(study: optuna.Study, settings: dict[str, Any], storage: str) -> None:
    """Record the sweep's settings on a new study; refuse to mix another sweep's trials into an old one."""
    recorded = study.user_attrs.get(SWEEP_SETTINGS)
    if recorded is None:
        if study.trials:
            log.warning(f"Study {study.study_name!r} has no recorded sweep settings: adopting this sweep's")
        study.set_user_attr(SWEEP_SETTINGS, settings)
        return
    if recorded == settings:
        return
    changes = []
    before, now = set(recorded["fixed"]), set(settings["fixed"])
    if before != now:
        changes.append(f"overrides {sorted(before - now)} then, {sorted(now - before)} now")
    spaces = recorded["search_space"], settings["search_space"]
    if changed := sorted(
        k for k in spaces[0].keys() | spaces[1].keys() if spaces[0].get(k) != spaces[1].get(k)
    ):
        changes.append(f"search space of {', '.join(changed)} changed")
    raise SweepError(
        f"study {study.study_name!r} in {storage} holds the trials of a sweep with other settings "
        f"({'; '.join(changes)}): rerun that sweep's command to resume it, or start a new study with "
        "hydra.sweeper.study_name=NAME"
    )


def counts_toward_n_trials(trial: FrozenTrial) -> bool:
    """Trials that ran to an end: complete, pruned or failed on their own (not interrupted)."""
    return trial.state.is_finished() and not trial.user_attrs.get(INTERRUPTED)


class PruningOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(self, sampler: Any, pruner: optuna.pruners.BasePruner, **upstream: Any) -> None:
        super().__init__(sampler, **upstream)
        self.pruner = pruner

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(
            [*self._parse_sweeper_params_config(), *arguments]
        )
        for name in fixed_params:  # a value given on the command line wins over the search space
            distributions.pop(name, None)
        if isinstance(self.sampler, functools.partial) and self.sampler.func is optuna.samplers.GridSampler:
            self._use_grid(distributions)
        study = self._open_study(sweep_settings(distributions, fixed_params, fixed_overrides))
        log.info(
            f"Study {study.study_name!r} in {self.storage}, sampler {type(self.sampler).__name__}, "
            f"pruner {type(self.pruner).__name__}, directions {self._get_directions()}"
        )
        while (to_go := self.n_trials - sum(map(counts_toward_n_trials, study.trials))) > 0:
            trials = [study.ask() for _ in range(min(self.n_jobs, to_go))]
            overrides = [
                (*trial_overrides, *job_environment(self.storage, study.study_name, trial.number))
                for trial, trial_overrides in zip(
                    trials,
                    self._configure_trials(trials, distributions, fixed_params, fixed_overrides),
                    strict=True,
                )
            ]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException:  # Ctrl-C or a launcher crash: never leave these trials RUNNING
                for trial in trials:
                    mark_interrupted(study, study._storage.get_trial(trial._trial_id))
                raise
            self.job_idx += len(returns)
            for trial, job in zip(trials, returns, strict=True):
                self._tell(study, trial, job)
            self._check_failure_rate(study)
        self._report(study)

    def _parse_sweeper_params_config(self) -> list[str]:
        return search_space_overrides(self.params)

    def _use_grid(self, distributions: dict[str, BaseDistribution]) -> None:
        """Build the (partial) GridSampler from the search space; n_trials is capped at the grid's size."""
        grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
        self.sampler = self.sampler(grid)
        self.n_trials = min(self.n_trials, math.prod(len(choices) for choices in grid.values()))
        log.info(f"GridSampler: {self.n_trials} trials")

    def _open_study(self, settings: dict[str, Any]) -> optuna.Study:
        # Without a storage the study lives in the sweep directory: jobs reach their trial through it.
        self.storage = absolute_storage(self.storage or f"{SQLITE_PREFIX}{self.sweep_dir}/optuna.db")
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=self.pruner,
            directions=self._get_directions(),
            load_if_exists=True,
        )
        check_same_sweep(study, settings, self.storage)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            mark_interrupted(study, trial)
        finished = sum(map(counts_toward_n_trials, study.trials))
        if finished:
            log.info(
                f"Resuming study {study.study_name!r}: {finished} finished trials kept, "
                f"{max(0, self.n_trials - finished)} to go (n_trials={self.n_trials} counts the whole study)"
            )
        return study

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job: JobReturn) -> None:
        if job.hydra_cfg is not None:
            trial.set_user_attr("run_dir", str(job.hydra_cfg.hydra.runtime.output_dir))
        if job.status is JobStatus.FAILED:
            # The job's exception (job.return_value would re-raise it with an "Error executing job" banner).
            error = job._return_value
            if isinstance(error, optuna.TrialPruned):
                log.info(f"Trial {trial.number} pruned: {error}")
                tell(study, trial, state=TrialState.PRUNED)
            else:
                self._fail(study, trial, f"{type(error).__name__}: {error}")
            return
        value = job.return_value
        try:
            values = [float(v) for v in value] if len(study.directions) > 1 else [float(value)]
        except (TypeError, ValueError):
            values = []
        if len(values) != len(study.directions) or not all(map(math.isfinite, values)):
            self._fail(
                study, trial, f"the task returned {value!r}, not {len(study.directions)} finite number(s)"
            )
            return
        tell(study, trial, values=values)

    @staticmethod
    def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        log.warning(f"Trial {trial.number} failed: {reason}")
        trial.set_user_attr(FAIL_REASON, reason)
        tell(study, trial, state=TrialState.FAIL)

    def _check_failure_rate(self, study: optuna.Study) -> None:
        failed = [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)]
        if len(failed) > self.max_failure_rate * self.n_trials:
            raise SweepError(
                f"{len(failed)} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} x n_trials={self.n_trials}; "
                f"last failure: {failed[-1].user_attrs.get(FAIL_REASON)}"
            )

    def _report(self, study: optuna.Study) -> None:
        trials = [t for t in study.trials if counts_toward_n_trials(t)]
        states = Counter(t.state.name.lower() for t in trials)
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        epochs_saved = sum(
            t.user_attrs.get("epochs_planned", 0) - t.user_attrs.get("epochs_completed", 0) for t in pruned
        )
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.storage,
            "trials": {state: states.get(state, 0) for state in ("complete", "pruned", "fail")},
            "epochs_used": sum(t.user_attrs.get("epochs_completed", 0) for t in trials),
            "epochs_reused": sum(t.user_attrs.get("epochs_reused", 0) for t in trials),
            "epochs_saved_by_pruning": epochs_saved,
        }
        log.info(
            f"Sweep done: study {study.study_name!r} holds {len(trials)} finished trials: "
            f"{states['complete']} completed, {states['pruned']} pruned, {states['fail']} failed"
        )
        if pruned:
            log.info(f"Pruning stopped {len(pruned)} trials early and saved {epochs_saved} epochs")
        if results["epochs_reused"]:
            log.info(
                f"Trials reused {results['epochs_reused']} of their {results['epochs_used']} epochs "
                "from earlier trials instead of training them"
            )
        if not states["complete"]:
            self._save_results(results)
            raise SweepError(f"No trial of study {study.study_name!r} completed: see the failures above")
        if len(study.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best_trial_info(best))
            test = best.user_attrs.get("test_acc")
            log.info(f"Best trial {best.number}: {best.params}")
            log.info(
                f"  validation {best.value:.4g}, test {'-' if test is None else f'{test:.4g}'}, "
                f"directory {best.user_attrs.get('run_dir')}"
            )
        else:
            results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
            log.info(f"Number of Pareto solutions: {len(study.best_trials)}")
        self._save_results(results)

    def _save_results(self, results: dict[str, Any]) -> None:
        # The sweep directory does not exist yet when a resumed study had no trial left to run.
        sweep_dir = Path(self.sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


# What a task may record on its trial (trial_bridge) for the summary.
REPORTED_ATTRS = ("run_dir", "status", "test_acc", "epochs_completed", "epochs_planned")


def best_trial_info(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        **{k: trial.user_attrs[k] for k in REPORTED_ATTRS if k in trial.user_attrs},
    }


def mark_interrupted(study: optuna.Study, trial: FrozenTrial) -> None:
    """FAIL a trial whose sweep died, flagged so it doesn't count, and queue its parameters again."""
    if trial.state != TrialState.RUNNING:
        return
    study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
    study._storage.set_trial_user_attr(
        trial._trial_id, FAIL_REASON, "interrupted: the sweep stopped while it ran"
    )
    tell(study, trial.number, state=TrialState.FAIL)
    if trial.params:
        study.enqueue_trial(trial.params)
    log.warning(f"Trial {trial.number} was interrupted: marked failed, its parameters queued again")


class PruningOptunaSweeper(OptunaSweeper):
    """`hydra/sweeper=optuna_pruning`: the Optuna sweeper with a `pruner` (hydra/sweeper/pruner=...)."""

    def __init__(self, sampler: Any, pruner: DictConfig | None, **upstream: Any) -> None:
        super().__init__(sampler, **upstream)  # instantiates the sampler (whitelisted)
        self.sweeper = PruningOptunaSweeperImpl(self.sweeper.sampler, instantiate_pruner(pruner), **upstream)
