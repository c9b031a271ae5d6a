"""hydra-optuna-sweeper, extended: pruning, resumable studies shared by many workers, failed trials that
don't end a sweep.

The upstream OptunaSweeperImpl provides the search space (parsing of hydra.sweeper.params and the
command line), trial configuration, the grid sampler's choices and the launcher. Its sweep() loop is
replaced here because it can only tell a trial COMPLETE or FAIL and counts n_trials per invocation;
this loop

- hands each job its trial (trial_bridge) so the task can report per epoch and be PRUNED;
- counts n_trials over the whole study, so any number of workers (the same command started in several
  terminals, on several machines or as cluster jobs) share one study, and rerunning a killed sweep
  continues it. Trials of workers that died are found by heartbeat (workers.py), failed and re-queued;
- seeds the sampler per trial (seeding.py), so a resumed or shared study never repeats its draws;
- records failed trials with their reason and goes on, until failures exceed max_failure_rate x n_trials;
- ends with a summary and optimization_results.yaml.
"""

import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, OverrideParseException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.optuna_pruning_sweeper.grammar import override_error_reason

from . import config as registered_configs  # noqa: F401  (registers the configs)
from .child_jobs import (
    JobInterrupted,
    interruption_arrived,
    interruptions_kept_as_such,
    interruptions_passed_to_child_jobs,
    interrupts_held,
)
from .disk import unwritable_reason
from .job_dirs import NumberedDirectories, first_job_number, shared_directory
from .seeding import SeedPerTrialSampler
from .storage import (
    StorageError,
    StorageSettingError,
    describe,
    one_line,
    open_storage,
    release_interrupted_access,
    stored_user_attrs,
)
from .sweep_owner import RESULTS_FILE, SweepDirectoryTaken, check_sweep_dir, claim_sweep_dir
from .trial_bridge import RUN_DIR, instantiate_pruner, job_environment, run_dir_attr
from .workers import FAIL_REASON, INTERRUPTED, Heartbeats, Worker, claim, end_dead_trials, give_up, tell

log = logging.getLogger(__name__)

SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
GRID_SAMPLER = "optuna.samplers.GridSampler"
ONE_SEQUENCE_SAMPLERS = (GRID_SAMPLER, "optuna.samplers.QMCSampler")
# Samplers told to treat running trials as badly scoring ones (constant_liar), so that trials asked while
# others run (n_jobs > 1, hydra/launcher=batched, several workers) spread out instead of repeating a point.
CONSTANT_LIAR_SAMPLERS = ("optuna.samplers.TPESampler",)
# Study attributes: the sweep's settings, readable (user attributes, shown by optuna-dashboard and
# `optuna studies`), and one system attribute per settings digest for the check under concurrency.
SWEEP_ID, SWEEP_FIXED, SWEEP_SEARCHED = "sweep.id", "sweep.fixed", "sweep.searched"
SWEEP_CLAIM_PREFIX = "sweep_settings:"
# How often a worker with nothing to ask looks again at the other workers' running trials.
POLL_SECONDS = 1.0
MAX_SAMPLER_SEED = 2**32 - 1  # numpy's RandomState, which the GridSampler and the QMCSampler seed


def search_space_overrides(params: DictConfig | None) -> list[str]:
    """hydra.sweeper.params as `key=value` overrides: nested keys joined with dots, so that
    `scheduler: {gamma: ...}` and upstream's flat `scheduler.gamma: ...` mean the same."""

    def flatten(prefix: str, node: Any) -> list[str]:
        if isinstance(node, DictConfig):
            return [line for key, value in node.items() for line in flatten(f"{prefix}{key}.", value)]
        return [f"{prefix[:-1]}={node}"]

    return flatten("", params) if params else []


def search_space(
    params: list[str], arguments: list[str]
) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    """Upstream's create_params_from_overrides over hydra.sweeper.params then the command line's sweep
    arguments, with a range Optuna refuses (`interval(0.9, 0.1)`, a log range from 0) or Hydra's grammar
    cannot read (`intervl(0.1, 0.9)` in a preset) as one line naming it instead of a traceback."""
    try:
        return create_params_from_overrides([*params, *arguments])
    except (ValueError, OverrideParseException) as error:
        culprit = next((a for a in [*params, *arguments] if not _makes_distribution(a)), None)
        where = "hydra.sweeper.params." if culprit in params else ""
        reason = override_error_reason(error) if isinstance(error, OverrideParseException) else error
        raise SweepSettingError(f"{where}{culprit or 'the search space'} is not allowed: {reason}") from None


def _makes_distribution(argument: str) -> bool:
    try:
        create_params_from_overrides([argument])
        return True
    except (ValueError, OverrideParseException):
        return False


def describe_distribution(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return f"one of {', '.join(map(str, distribution.choices))}"
    if isinstance(distribution, IntDistribution | FloatDistribution):
        kind = "int" if isinstance(distribution, IntDistribution) else "float"
        step = f" step {distribution.step:g}" if distribution.step not in (None, 1) else ""
        log_scale = " log" if distribution.log else ""
        return f"{kind} in [{distribution.low:g}, {distribution.high:g}]{step}{log_scale}"
    return distribution_to_json(distribution)


class SweepSettings:
    """What makes the trials of a study comparable: the search space and the fixed task overrides
    (hydra.* settings such as n_trials, the launcher or the pruner may change between invocations)."""

    def __init__(
        self,
        distributions: dict[str, BaseDistribution],
        fixed_params: dict[str, Any],
        fixed_overrides: list[str],
    ) -> None:
        self.distributions = dict(sorted(distributions.items()))
        self.fixed = sorted(
            [f"{name}={value}" for name, value in fixed_params.items()] + list(fixed_overrides)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "search_space": {name: distribution_to_json(d) for name, d in self.distributions.items()},
            "fixed": self.fixed,
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()[:12]

    def readable(self) -> dict[str, str]:
        return {
            SWEEP_ID: self.digest,
            SWEEP_FIXED: " ".join(self.fixed) or "(none)",
            SWEEP_SEARCHED: "; ".join(
                f"{n}: {describe_distribution(d)}" for n, d in self.distributions.items()
            ),
        }


def settings_difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    changes = []
    fixed_before, fixed_now = set(before["fixed"]), set(now["fixed"])
    if fixed_before != fixed_now:
        changes.append(
            f"overrides {sorted(fixed_before - fixed_now)} then, {sorted(fixed_now - fixed_before)} now"
        )
    spaces = before["search_space"], now["search_space"]
    if changed := sorted(
        k for k in spaces[0].keys() | spaces[1].keys() if spaces[0].get(k) != spaces[1].get(k)
    ):
        changes.append(f"search space of {', '.join(changed)} changed")
    return "; ".join(changes)


class SweepError(CompactHydraException):
    """A sweep that cannot go on; Hydra prints the message as one line, without a traceback, and exits 1."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(f"error: {message}")
        self.reason = reason or message  # what the trials it gives up record


class SweepSettingError(SweepError):
    """A sweeper setting or search space it cannot take, found before the study is opened: exit code 2, as
    for every other bad input (src.train's checks, src/callbacks.py); Hydra would exit 1."""


def check_same_sweep(study: optuna.Study, settings: SweepSettings, where: str) -> None:
    """Refuse to mix another sweep's trials into a study, also when two sweeps start at the same instant.

    Each sweep records a claim under its settings' digest, then reads all claims: of two sweeps with other
    settings, the later one to read always sees the other's claim, withdraws its own and stops. (Two that
    read at the same instant may both stop; neither ever goes on beside the other.)
    """
    storage, study_id = study._storage, study._study_id
    own = SWEEP_CLAIM_PREFIX + settings.digest
    storage.set_study_system_attr(study_id, own, settings.as_json())
    claims = storage.get_study_system_attrs(study_id)
    others = {k: v for k, v in claims.items() if k.startswith(SWEEP_CLAIM_PREFIX) and k != own and v}
    if others:
        storage.set_study_system_attr(study_id, own, None)  # withdrawn
        difference = settings_difference(next(iter(others.values())), settings.as_json())
        raise SweepError(
            f"study {study.study_name!r} in {where} holds the trials of a sweep with other settings "
            f"({difference}): rerun that sweep's command to resume it, or start a new study with "
            "hydra.sweeper.study_name=NAME"
        )
    if study.user_attrs.get(SWEEP_ID) != settings.digest:
        for key, value in settings.readable().items():
            study.set_user_attr(key, value)


def typed_value(text: Any) -> Any:
    """A value given on the command line as YAML reads it (3, 0.5, true), else the text itself."""
    if not isinstance(text, str):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool) else text


@dataclass(frozen=True)
class AskBudget:
    """What a worker may ask after one count of the study, when it held `counted` trials: up to `size`
    trials (n_jobs, or what n_trials leaves), of which `new` may be new ones; the others are the trials
    queued to run again (retries), which the count left room for. Other workers may ask theirs meanwhile:
    Optuna numbers a study's trials in the order they are made, so a trial's number tells how many were made
    since the count, by any worker. Asking stops once a new trial of this worker's finds those fill `new`:
    workers that count at the same instant overshoot n_trials by at most one trial each, not by a batch
    each (two batched workers of n_jobs=10 used to end a 30-trial study with 40)."""

    size: int
    new: int
    counted: int
    # Every trial n_trials leaves fits in this batch, and no other worker's trial was running: once the
    # batch is told, the study is done, unless one of its trials is to run again (interrupted)
    last: bool = False

    def filled(self, asked_numbers: Sequence[int]) -> bool:
        if len(asked_numbers) >= self.size:
            return True
        newest = asked_numbers[-1]
        return newest >= self.counted and newest + 1 - self.counted >= self.new


def counts_toward_n_trials(trial: FrozenTrial) -> bool:
    """Trials that ran to an end: complete, pruned or failed on their own (not interrupted)."""
    return trial.state.is_finished() and not trial.user_attrs.get(INTERRUPTED)


def sampler_builder(config: DictConfig, **fixed: Any) -> Callable[[int | None], Any]:
    """What makes the configured sampler with a given seed (and `fixed`). A sampler is made for every trial
    (seeding.py): Hydra instantiates the config once, as a partial (7 ms a time for the TPESampler, 0.5 ms
    a call), unless it holds a nested object (CmaEs's `independent_sampler`, with a seed of its own), which
    each sampler must get anew, not shared, or is a partial itself: that config is instantiated each time."""
    nested = {key: value for key, value in OmegaConf.to_container(config).items() if key != "_target_"}
    if _holds_target(nested) or config.get("_partial_"):  # (partial already: the GridSampler's)
        return lambda seed: instantiate(config, seed=seed, **fixed, _execution_whitelist_=SAMPLER_WHITELIST)
    partial = instantiate(config, **fixed, _partial_=True, _execution_whitelist_=SAMPLER_WHITELIST)
    return lambda seed: partial(seed=seed)


def _holds_target(value: object) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(map(_holds_target, value.values()))
    return isinstance(value, list) and any(map(_holds_target, value))


class PruningOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        sampler: DictConfig,
        pruner: optuna.pruners.BasePruner,
        heartbeat_interval: int,
        grace_period: int,
        metric_names: list[str] | None,
        **upstream: Any,
    ) -> None:
        # Upstream asserts 0 <= max_failure_rate <= 1 here, a traceback: _check_settings says it in one line.
        super().__init__(None, **{**upstream, "max_failure_rate": 0.0})
        self.max_failure_rate = upstream["max_failure_rate"]
        self.sampler_config = sampler
        self.pruner = pruner
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.metric_names = list(metric_names) if metric_names else None
        self.where = ""
        self.seeding = ""
        self.numbered: NumberedDirectories | None = None  # the jobs' directories, when they are numbered

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.cwd = Path(config.hydra.runtime.cwd)

    def sweep(self, arguments: list[str]) -> None:
        with interruptions_kept_as_such():
            try:
                self._sweep(arguments)
            except SweepSettingError as error:
                print(error, file=sys.stderr)
                raise SystemExit(2) from None

    def _sweep(self, arguments: list[str]) -> None:
        self._check_settings()
        self._process_searchspace_config()
        distributions, fixed_params, fixed_overrides = search_space(
            self._parse_sweeper_params_config(), arguments
        )
        for name in fixed_params:  # a value given on the command line wins over the search space
            distributions.pop(name, None)
        self.sampler = self._seeded_sampler(distributions)
        study = self._open_study(SweepSettings(distributions, fixed_params, fixed_overrides))
        self.numbered = NumberedDirectories.of(self.config)
        self.job_idx = first_job_number(Path(self.sweep_dir), self.numbered)
        worker = Worker.this_process()
        log.info(
            f"Study {study.study_name!r} in {self.where}, worker {worker.label}, "
            f"sampler {self.sampler_name} ({self.seeding}), "
            f"pruner {type(self.pruner).__name__}, "
            f"directions {self._get_directions()}"
        )
        with Heartbeats(study._storage, self.heartbeat_interval) as heartbeats:
            waiting_logged = False
            while (budget := self._trials_to_ask(study)) is not None:
                if budget.size == 0:
                    if not waiting_logged:
                        log.info("Waiting for the other workers' running trials to finish")
                        waiting_logged = True
                    time.sleep(POLL_SECONDS)
                    continue
                waiting_logged = False
                self._run_batch(
                    study, budget, distributions, fixed_params, fixed_overrides, worker, heartbeats
                )
                self._check_failure_rate(study)
        self._launches_no_more()
        self._report(study)

    def _launches_no_more(self) -> None:
        """Tell a launcher that has a sweep_ended() (hydra/launcher=batched: its launch process ends, torn
        down by the kernel while this process tells and reports the study). Should a batch follow after all
        (a trial of another worker queued again), that launcher runs it without the process, slower."""
        if callable(sweep_ended := getattr(self.launcher, "sweep_ended", None)):
            sweep_ended()

    def _is_group(self, key: str) -> bool:
        """`key` names a config group (`hparams_search`, `hydra/launcher`), not a value."""
        return "/" in key or self.hydra_context.config_loader.repository.group_exists(key)

    def _check_settings(self) -> None:
        """The sweeper's own settings, each with a one-line error (n_jobs=0 used to loop forever)."""
        checks = {
            "n_trials": (
                self.n_trials,
                isinstance(self.n_trials, int) and self.n_trials >= 1,
                "an integer >= 1",
            ),
            "n_jobs": (self.n_jobs, isinstance(self.n_jobs, int) and self.n_jobs >= 1, "an integer >= 1"),
            "study_name": (  # '' made a study that compare and confirm could not name
                self.study_name,
                self.study_name is None or str(self.study_name).strip() != "",
                "a name, or null (Optuna makes one up, and the same command starts another study)",
            ),
            "max_failure_rate": (
                self.max_failure_rate,
                isinstance(self.max_failure_rate, int | float) and 0 <= self.max_failure_rate <= 1,
                "a number in [0, 1]",
            ),
            "heartbeat_interval": (
                self.heartbeat_interval,
                isinstance(self.heartbeat_interval, int) and self.heartbeat_interval >= 1,
                "an integer number of seconds >= 1",
            ),
            "grace_period": (
                self.grace_period,
                isinstance(self.grace_period, int) and self.grace_period > self.heartbeat_interval,
                f"an integer number of seconds > heartbeat_interval ({self.heartbeat_interval})",
            ),
        }
        seed = self.sampler_config.get("seed")
        checks["sampler.seed"] = (
            seed,
            seed is None or (isinstance(seed, int) and 0 <= seed <= MAX_SAMPLER_SEED),
            f"null or an integer in [0, {MAX_SAMPLER_SEED}] (numpy's seeds, which Optuna's samplers take)",
        )
        for key, (value, ok, allowed) in checks.items():
            if not ok or isinstance(value, bool):
                raise SweepSettingError(f"hydra.sweeper.{key}={value!r} is not allowed: {allowed}")
        directions = self._get_directions()
        if not directions or any(d not in ("maximize", "minimize") for d in directions):
            given = self.direction if isinstance(self.direction, str) else directions
            raise SweepSettingError(
                f"hydra.sweeper.direction={given!r} is not allowed: maximize or minimize "
                "(a list of them for several objectives)"
            )

    @property
    def sampler_name(self) -> str:
        return str(self.sampler_config._target_).rsplit(".", 1)[-1]

    def _seeded_sampler(self, distributions: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
        """The configured sampler, made anew for each trial with a seed of its own (seeding.py), except
        for samplers whose seed fixes one sequence that the study walks through (the GridSampler's shuffled
        grid, the QMCSampler's scrambling): those keep the configured seed. The GridSampler gets the search
        space as its grid, and n_trials is capped at the grid's size."""
        target = self.sampler_config._target_
        seed = self.sampler_config.get("seed")
        grid = None
        if target == GRID_SAMPLER:
            grid, continuous = {}, []
            for name, distribution in distributions.items():
                try:  # upstream raises a ValueError for a distribution the GridSampler cannot walk
                    grid[name] = self._to_grid_sampler_choices(distribution)
                except ValueError:
                    continuous.append(name)
            if continuous:
                raise SweepSettingError(
                    f"hydra/sweeper/sampler=grid is not allowed with a continuous range "
                    f"({', '.join(continuous)}): give each searched key choice(...) or range(...)"
                )
            self.n_trials = min(self.n_trials, math.prod(len(choices) for choices in grid.values()))
            log.info(f"GridSampler: {self.n_trials} trials")

        liar = {"constant_liar": True} if target in CONSTANT_LIAR_SAMPLERS else {}
        build = sampler_builder(self.sampler_config, **liar)

        def make(seed: int | None) -> optuna.samplers.BaseSampler:
            sampler = build(seed)
            return sampler(grid) if grid is not None else sampler

        if target in ONE_SEQUENCE_SAMPLERS:
            self.seeding = f"seed {seed}"
            return make(seed)
        self.seeding = f"seed {seed} and the trial number"
        return SeedPerTrialSampler(make, seed)

    def _trials_to_ask(self, study: optuna.Study) -> AskBudget | None:
        """What to ask now: None when the study is done (n_trials finished, none running), a budget of
        size 0 when only other workers' trials are left running (one of them may yet have to run again)."""
        end_dead_trials(study, self.grace_period)
        trials = study.get_trials(deepcopy=False)
        finished = sum(map(counts_toward_n_trials, trials))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        queued = sum(t.state == TrialState.WAITING for t in trials)
        to_go = self.n_trials - finished - running
        if to_go > 0:
            return AskBudget(
                min(self.n_jobs, to_go), to_go - queued, len(trials), to_go <= self.n_jobs and not running
            )
        return AskBudget(0, 0, len(trials)) if running else None

    def _run_batch(
        self,
        study: optuna.Study,
        budget: AskBudget,
        distributions: dict[str, BaseDistribution],
        fixed_params: dict[str, Any],
        fixed_overrides: list[str],
        worker: Worker,
        heartbeats: Heartbeats,
    ) -> None:
        if reason := unwritable_reason(Path(self.sweep_dir)):  # before any trial is asked for it
            raise SweepError(f"hydra.sweep.dir={self.sweep_dir} cannot be written: {reason}")
        trials: list[optuna.Trial] = []
        claimed: NumberedDirectories | None = None  # the batch's directories, once made
        fixed_values = {name: typed_value(value) for name, value in fixed_params.items()}
        try:
            while not trials or not budget.filled([t.number for t in trials]):
                with interrupts_held():  # asked and claimed, or neither: a Ctrl-C is taken after, below
                    # Optuna expects heartbeats inside optimize() only; this loop records them itself.
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                        trial = study.ask()
                    heartbeats.add(trial._trial_id)
                    claim(study, trial, worker, fixed_values)
                    trials.append(trial)
            if len(trials) < budget.size:
                log.info(
                    f"Asked {len(trials)} of {budget.size} trials: other workers' new trials fill "
                    f"n_trials={self.n_trials}"
                )
            with interrupts_held():  # the trials' parameters and fixed values, written whole
                configured = self._configure_trials(trials, distributions, fixed_params, fixed_overrides)
            overrides = [
                (*trial_overrides, *job_environment(study._study_id, trial._trial_id))
                for trial, trial_overrides in zip(trials, configured, strict=True)
            ]
            if self.numbered is not None:  # other workers may write into this sweep directory too
                self.job_idx = self.numbered.claim(self.job_idx, len(overrides))
                claimed = self.numbered
            numbered = list(enumerate(overrides, start=self.job_idx))
            if reason := shared_directory(self.config, numbered, self._is_group):
                raise SweepError(reason)
            with interruptions_passed_to_child_jobs(self.launcher):
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                except Exception as error:  # sbatch refused the array, a joblib worker was killed, ...
                    if interruption_arrived():  # a Ctrl-C that became another error in a library
                        raise KeyboardInterrupt from error
                    raise self._launch_failed(error) from error
        except BaseException as stop:  # Ctrl-C or a launcher crash: never leave these trials RUNNING
            release_interrupted_access(stop, study._storage)
            if claimed is not None:
                claimed.release_unused(self.job_idx, len(trials), self.launcher)
            why = (
                stop.reason if isinstance(stop, SweepError) else "interrupted: the sweep stopped while it ran"
            )
            for trial in trials:
                give_up(study, study._storage.get_trial(trial._trial_id), why)
            raise
        self.job_idx += len(returns)
        if budget.last and not any(isinstance(job._return_value, JobInterrupted) for job in returns):
            self._launches_no_more()  # its launch process torn down while the outcomes are told
        with interrupts_held():  # every outcome told: a Ctrl-C here left trials RUNNING (2 of 32, at random)
            for trial, job in zip(trials, returns, strict=True):
                try:
                    self._tell(study, trial, job)
                except UpdateFinishedTrialError:
                    log.warning(
                        f"Trial {trial.number} had been given up by another worker (its heartbeat went "
                        "stale): its result is not recorded in the study"
                    )
                heartbeats.discard(trial._trial_id)
        log.debug(f"told the study the outcomes of trials {trials[0].number} to {trials[-1].number}")

    def _launch_failed(self, error: Exception) -> SweepError:
        """The launcher's own failure (its jobs report theirs in their returns) as one line, which the
        batch's trials also record as the reason they failed (before: a traceback, and trials that said the
        sweep was stopped). The trials are queued again, so the same command resumes."""
        launcher = (self.config.hydra.runtime.get("choices") or {}).get("hydra/launcher", "?")
        failure = f"hydra/launcher={launcher} failed: {type(error).__name__}: {one_line(error).rstrip('.')}"
        if codes := [line for line in str(error).splitlines()[1:] if "exit code" in line]:
            failure += f" ({codes[0].strip().rstrip('.')})"  # loky's: which signal ended its workers
        return SweepError(f"{failure}; its trials are queued again: run the same command to resume", failure)

    def _configure_trials(
        self,
        trials: list[optuna.Trial],
        distributions: dict[str, BaseDistribution],
        fixed_params: dict[str, Any],
        fixed_overrides: list[str],
    ) -> Sequence[Sequence[str]]:
        """Upstream's, without its record of the fixed values on each trial: claim() records them as each
        trial is asked, once, as the numbers or booleans they are (upstream records the text typed:
        `trainer.epochs` was '3' beside an `epochs_planned` of 3). Upstream is handed them as fixed
        overrides, so it writes no attribute of its own, and each trial's overrides are the same
        `name=value` lines in the same order (its search space's, then the fixed ones)."""
        as_overrides = [f"{name}={value}" for name, value in fixed_params.items()]
        overrides = super()._configure_trials(trials, distributions, {}, [*as_overrides, *fixed_overrides])
        for trial in trials:
            if overlap := sorted(trial.params.keys() & fixed_params.keys()):  # upstream's check, kept
                raise ValueError(
                    "Overlapping fixed parameters and search space parameters found!"
                    f"Overlapping parameters: {overlap}"
                )
        return overrides

    def _parse_sweeper_params_config(self) -> list[str]:
        return search_space_overrides(self.params)

    def _open_study(self, settings: SweepSettings) -> optuna.Study:
        try:
            storage = open_storage(
                self.storage,
                sweep_dir=lambda: Path(self.sweep_dir),
                cwd=self.cwd,
                heartbeat_interval=self.heartbeat_interval,
                grace_period=self.grace_period,
            )
        except StorageError as error:
            kind = SweepSettingError if isinstance(error, StorageSettingError) else SweepError
            raise kind(str(error)) from None
        self.where = describe(storage)
        if self.study_name is not None:  # before a new study is created in the storage
            self._sweep_dir_owner(check_sweep_dir, self.study_name)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            pruner=self.pruner,
            directions=self._get_directions(),
            load_if_exists=True,
        )
        check_same_sweep(study, settings, self.where)
        self._sweep_dir_owner(claim_sweep_dir, study.study_name)  # a refused sweep leaves no directory
        if self.study_name is None:  # the same command would start yet another study
            log.warning(
                f"hydra.sweeper.study_name=null: Optuna named the study {study.study_name!r}; to resume or "
                f"extend it, add hydra.sweeper.study_name={study.study_name} to the command"
            )
        if self.metric_names and study.metric_names != self.metric_names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(self.metric_names)
        finished = sum(map(counts_toward_n_trials, study.trials))
        if finished:
            log.info(
                f"Study {study.study_name!r} holds {finished} finished trials: "
                f"{max(0, self.n_trials - finished)} to go (n_trials={self.n_trials} counts the whole study)"
            )
        return study

    def _sweep_dir_owner(self, check_or_claim: Callable[[Path, str, str], None], study_name: str) -> None:
        try:
            check_or_claim(Path(self.sweep_dir), study_name, self.where)
        except SweepDirectoryTaken as error:
            raise SweepError(str(error)) from None

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job: JobReturn) -> None:
        if job.hydra_cfg is not None:  # recorded by the job itself, usually (trial_bridge.current_trial)
            run_dir = run_dir_attr(Path(job.hydra_cfg.hydra.runtime.output_dir), self.cwd)
            if stored_user_attrs(study._storage, trial._trial_id).get(RUN_DIR) != run_dir:
                trial.set_user_attr(RUN_DIR, run_dir)
        if job.status is JobStatus.FAILED:
            # The job's exception (job.return_value would re-raise it with an "Error executing job" banner).
            error = job._return_value
            if isinstance(error, optuna.TrialPruned):
                log.info(f"Trial {trial.number} pruned: {error}")
                tell(study, trial, state=TrialState.PRUNED)
            elif isinstance(error, JobInterrupted):  # its worker alone was stopped: run it again
                give_up(study, study._storage.get_trial(trial._trial_id), f"interrupted: {error}")
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
        failed = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))  # read, not copied
            if not t.user_attrs.get(INTERRUPTED)
        ]
        if len(failed) > self.max_failure_rate * self.n_trials:
            raise SweepError(
                f"{len(failed)} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} x n_trials={self.n_trials}; "
                f"last failure: {failed[-1].user_attrs.get(FAIL_REASON)}"
            )

    def _report(self, study: optuna.Study) -> None:
        """The study's outcome: trial counts, the best trial (its parameters, value and run directory), each
        searched choice's options ranked; logged and written to optimization_results.yaml. What a task
        records on its trials beyond that is the app's to summarize (a Hydra callback's on_multirun_end)."""
        trials = [t for t in study.trials if counts_toward_n_trials(t)]
        states = Counter(t.state.name.lower() for t in trials)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.where,
            "trials": {state: states.get(state, 0) for state in ("complete", "pruned", "fail")},
        }
        log.info(
            f"Sweep done: study {study.study_name!r} holds {len(trials)} finished trials: "
            f"{states['complete']} completed, {states['pruned']} pruned, {states['fail']} failed"
        )
        if not states["complete"]:
            self._save_results(results)
            raise SweepError(f"No trial of study {study.study_name!r} completed: see the failures above")
        if len(study.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best_trial_info(best))
            objective = study.metric_names[0] if study.metric_names else "value"
            log.info(f"Best trial {best.number}: {best.params}")
            log.info(f"  {objective} {best.value:.4g}, directory {best.user_attrs.get(RUN_DIR)}")
            if ranked := best_per_choice(study):
                results["best_per_choice"] = ranked
                for name, choices in ranked.items():
                    log.info(
                        f"Best per {name}: "
                        + ", ".join(f"{c} {r['value']:.4g} (trial {r['trial']})" for c, r in choices.items())
                    )
        else:
            results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
            log.info(f"Number of Pareto solutions: {len(study.best_trials)}")
        self._save_results(results)

    def _save_results(self, results: dict[str, Any]) -> None:
        # The sweep directory does not exist yet when a resumed study had no trial left to run.
        sweep_dir = Path(self.sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        path = sweep_dir / RESULTS_FILE
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # renamed into place: never half a file
        OmegaConf.save(OmegaConf.create(results), temporary)
        os.replace(temporary, path)


def best_per_choice(study: optuna.Study) -> dict[str, dict[str, dict[str, Any]]]:
    """For each searched choice (a categorical parameter, such as a config group), its options ranked by
    their best completed trial: the value and trial number, best first."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    names = {
        name
        for trial in completed
        for name, distribution in trial.distributions.items()
        if isinstance(distribution, optuna.distributions.CategoricalDistribution)
    }
    ranked = {}
    for name in sorted(names):
        best: dict[Any, FrozenTrial] = {}
        for trial in completed:
            if name in trial.params:
                choice = trial.params[name]
                if choice not in best or (trial.value > best[choice].value) == maximize:
                    best[choice] = trial
        order = sorted(best.items(), key=lambda item: item[1].value, reverse=maximize)
        ranked[name] = {
            str(choice): {"value": t.value, "trial": t.number, "params": t.params} for choice, t in order
        }
    return ranked


def best_trial_info(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        **trial.user_attrs,  # what the task recorded on it: its run directory, and the app's own
    }


class PruningOptunaSweeper(OptunaSweeper):
    """`hydra/sweeper=optuna_pruning`: the Optuna sweeper with a `pruner` (hydra/sweeper/pruner=...)."""

    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig | None,
        heartbeat_interval: int,
        grace_period: int,
        metric_names: list[str] | None = None,
        **upstream: Any,
    ) -> None:
        self.sweeper = PruningOptunaSweeperImpl(
            sampler, instantiate_pruner(pruner), heartbeat_interval, grace_period, metric_names, **upstream
        )
