"""One training run: data, model, optimizer and scheduler from the composed config, the loop, the run files.

Writes metrics.csv, metrics.json, model.pt (and TensorBoard events) into the run's Hydra output
directory, and returns the validation metric named by `optimized_metric` for sweepers. The config
is validated before this runs (src.train.main).
"""

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hydra_plugins.optuna_pruning_sweeper.child_jobs import interrupts_held
from hydra_plugins.optuna_pruning_sweeper.storage import release_interrupted_access, set_trial_attrs
from hydra_plugins.optuna_pruning_sweeper.trial_bridge import JOB_END, current_trial, job_end
from src.components import build_model, build_optimizer
from src.config import EXECUTION_WHITELIST
from src.cpu_share import CpuShare, job_cpus
from src.data import MnistSplits, load_mnist
from src.epoch_callbacks import EpochCallback, History, ProgressLog, ReportToOptuna, RunContext
from src.errors import time_limit_reached
from src.hardware import resolve_device, threads_for_this_job
from src.interrupts import interruption_behind
from src.loop import fit
from src.pruning import first_prunable_epoch
from src.rerun import given_overrides
from src.run_files import save_weights, write_summary
from src.run_record import (
    EPOCH_RESULTS,
    METRICS_JSON,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_PRUNED,
    TRIAL_ATTRS,
    EpochRecord,
    Summary,
    class_name,
)
from src.schedule_config import lr_not_used
from src.schedules import SCHEDULE_KEYS, Stepping, build_scheduler, constant_epochs, fill_in_steps
from src.shared_prefix import SharedPrefix, StoreSharedEpochs

log = logging.getLogger(__name__)


def build(cfg: DictConfig, device: torch.device) -> tuple[Any, Any, Any]:
    """The model, optimizer and scheduler, instantiated from their config groups (torch's own classes)."""
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    return model, optimizer, build_scheduler(cfg.scheduler, optimizer)


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyperparameters as flat scalars (for TensorBoard's HParams and the sweep summary)."""
    flat: dict[str, Any] = {
        "model": class_name(cfg.model._target_),
        "optimizer": class_name(cfg.optimizer._target_),
        "scheduler": class_name(cfg.scheduler._target_),
        "epochs": cfg.trainer.epochs,
        "batch_size": cfg.trainer.batch_size,
        "seed": cfg.trainer.seed,
    }
    for group in ("optimizer", "scheduler"):
        for key, value in cfg[group].items():
            if key.startswith("_") or (group == "scheduler" and key in SCHEDULE_KEYS):
                continue
            if isinstance(value, int | float | str | bool):
                flat[f"{group}.{key}"] = value
    return flat


def load_data(cfg: DictConfig, device: torch.device, mapped: bool = False) -> MnistSplits:
    """The run's data on its device; `mapped`: its images to be converted at once (data.read_idx)."""
    data = load_mnist(
        root=Path(to_absolute_path(cfg.data.root)),
        download=cfg.data.download,
        offline_fallback=cfg.data.offline_fallback,
        val_size=cfg.data.val_size,
        split_seed=cfg.data.split_seed,
        mapped=mapped,
    ).to(device)
    return data.standardized() if cfg.data.normalize else data


def epoch_results(records: list[EpochRecord]) -> dict[str, Any]:
    """metrics.json's accuracies: the last epoch's, and the best validation epoch (None before any epoch)."""
    if not records:
        return {**dict.fromkeys(EPOCH_RESULTS, None), Summary.EPOCHS_COMPLETED: 0}
    final, best = records[-1], max(records, key=lambda r: r.val_acc)
    return {
        Summary.VAL_ACC: final.val_acc,
        Summary.BEST_VAL_ACC: best.val_acc,
        Summary.BEST_EPOCH: best.epoch,
        Summary.TEST_ACC: final.test_acc,
        Summary.EPOCHS_COMPLETED: len(records),
    }


def command_line_config_dirs(hydra_cfg: DictConfig) -> list[Path]:
    """The directories --config-dir added to the config search path."""
    return [
        Path(source.path)
        for source in hydra_cfg.runtime.config_sources
        if source.provider == "command-line" and source.schema == "file"
    ]


def run_context(cfg: DictConfig) -> RunContext:
    """This job's context from Hydra's config (the run or sweep job being executed)."""
    hydra_cfg = HydraConfig.get()
    with interrupts_held():  # it opens the study and records the run's directory on the trial
        trial = current_trial()
    return RunContext(
        run_dir=Path(hydra_cfg.runtime.output_dir),
        job=str(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else "run",
        overrides=given_overrides(hydra_cfg.overrides.task, command_line_config_dirs(hydra_cfg)),
        trial=trial,
        log=log,
    )


def epoch_callbacks(
    cfg: DictConfig,
    context: RunContext,
    prune_from_epoch: int | None,
    shared_epochs: Callable[[list[EpochRecord]], EpochCallback] | None = None,
) -> list[EpochCallback]:
    """The run's epoch callbacks: its files, its log line, its shared epochs (made from the run's
    records), the configured logger, its Optuna trial (last: a pruned epoch is stored and logged first)."""
    history = History(context.run_dir)
    callbacks: list[EpochCallback] = [history, ProgressLog(context.log, cfg.trainer.epochs)]
    if shared_epochs is not None:
        callbacks.append(shared_epochs(history.records))
    if cfg.logger.get("epoch_callback") is not None:
        logger = instantiate(cfg.logger.epoch_callback, _execution_whitelist_=EXECUTION_WHITELIST)
        callbacks.append(logger(context, hyperparameters(cfg)))
    if context.trial is not None:
        callbacks.append(ReportToOptuna(context.trial, prune_from_epoch))
    return callbacks


def prunable_from(cfg: DictConfig, context: RunContext, constant: int) -> int | None:
    if context.trial is None:
        return None
    return first_prunable_epoch(cfg.prune_from, constant, context.trial.params)


def train(cfg: DictConfig, context: RunContext | None = None) -> Any:
    """Train the run; its optimized metric. `context`: given when the run trains as one of a batch's trials
    (src/batched_runs.py), else this job's."""
    started = time.perf_counter()
    share = CpuShare(job_cpus())
    share.register()  # one of the processes that train on this machine's CPUs (src/cpu_share.py)
    torch.set_num_threads(threads_for_this_job(cfg.trainer.num_threads, share))
    context = context or run_context(cfg)
    if note := lr_not_used(cfg, context.overrides):
        context.log.warning(note)
    device = resolve_device(cfg.trainer.device)
    data = load_data(cfg, device)
    fill_in_steps(cfg, len(data.train))  # the run's length in optimizer steps, for per-step schedulers
    torch.manual_seed(cfg.trainer.seed)
    model, optimizer, scheduler = build(cfg, device)
    stepping = Stepping(scheduler, cfg.scheduler, optimizer)
    generator = torch.Generator().manual_seed(cfg.trainer.seed)  # the training set's shuffles
    constant = constant_epochs(cfg)  # epochs before the schedule first changes an optimizer setting
    shared = (
        SharedPrefix.for_run(cfg, data, device, context.run_dir, constant)
        if cfg.trainer.prefix_cache
        else None
    )
    callbacks = epoch_callbacks(
        cfg,
        context,
        prunable_from(cfg, context, constant),
        (lambda records: StoreSharedEpochs(shared, model, optimizer, generator, records)) if shared else None,
    )
    log_data(data, device, context.log)

    def on_epoch_end(record: EpochRecord) -> None:
        # A reused epoch (shared epochs) ran at its constant start rate throughout.
        step_lrs = (
            (stepping.take_step_lrs() or [record.lr] * cfg.steps.per_epoch) if stepping.per_step else []
        )
        for callback in callbacks:
            callback.on_epoch_end(record, step_lrs)

    with finishing_run(cfg, context, data, device, callbacks, started) as finish:
        reused = shared.resume(model, optimizer, stepping, generator, on_epoch_end) if shared else 0
        finish.epochs_reused, finish.reused_from = reused, shared.reused_from if shared else None
        finish.model = model
        fit(
            model,
            optimizer,
            stepping,
            data,
            epochs=cfg.trainer.epochs,
            batch_size=cfg.trainer.batch_size,
            eval_batch_size=cfg.trainer.eval_batch_size,
            generator=generator,
            on_epoch_end=on_epoch_end,
            first_epoch=reused + 1,
        )
    return finish.summary[cfg.optimized_metric]


def log_data(data: MnistSplits, device: torch.device, logger: logging.Logger = log) -> None:
    logger.info(
        "data: %s (train %d, val %d, test %d) | device %s, %d threads",
        data.source,
        len(data.train),
        len(data.val),
        len(data.test),
        device,
        torch.get_num_threads(),
    )


@dataclass
class RunEnd:
    """What finishing_run needs to know of the run beyond its callbacks, and the summary it wrote."""

    model: Any = None  # the weights saved (None: nothing trained yet, none saved)
    epochs_reused: int = 0
    reused_from: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@contextmanager
def finishing_run(
    cfg: DictConfig,
    context: RunContext,
    data: MnistSplits,
    device: torch.device,
    callbacks: list[EpochCallback],
    started: float,
) -> Iterator[RunEnd]:
    """Run the block (the training), then whatever happened write metrics.json with the status, the
    weights (unless failed), end every callback and record the outcome on the Optuna trial. Pruned,
    failed and interrupted runs re-raise after that."""
    end = RunEnd()
    status, reason = STATUS_COMPLETED, None
    try:
        yield end
    except optuna.TrialPruned as pruned:
        status, reason = STATUS_PRUNED, str(pruned)
        raise
    except optuna.exceptions.UpdateFinishedTrialError:  # at an epoch's report
        # Its sweep ended the trial: stopped (the trial is queued again), or it took this job for dead
        status, reason = STATUS_INTERRUPTED, "its sweep ended its trial (stopped, or took this job for dead)"
        raise
    except Exception as error:
        if (stop := interruption_behind(error)) is not None:  # made by the interruption (a save cut short)
            status, reason = STATUS_INTERRUPTED, f"{type(stop).__name__}: stopped from outside"
            release_interrupted_access(stop, context.trial.storage if context.trial is not None else None)
            raise stop from error
        limit = time_limit_reached(error)
        status, reason = STATUS_FAILED, f"{type(limit or error).__name__}: {limit or error}"
        if limit is not None:
            raise limit from error
        raise
    except BaseException as stop:  # Ctrl-C (KeyboardInterrupt), or an exit asked from outside
        status, reason = STATUS_INTERRUPTED, f"{type(stop).__name__}: stopped from outside"
        # it may have come in the middle of a report to the study
        release_interrupted_access(stop, context.trial.storage if context.trial is not None else None)
        raise
    finally:
        history = next(c for c in callbacks if isinstance(c, History))
        end.summary = {
            Summary.STATUS: status,
            Summary.REASON: reason,
            **epoch_results(history.records),
            Summary.EPOCHS_PLANNED: cfg.trainer.epochs,
            Summary.EPOCHS_REUSED: end.epochs_reused,
            Summary.REUSED_FROM: end.reused_from,
            Summary.WALL_TIME_S: time.perf_counter() - started,
            Summary.DATA_SOURCE: data.source,
            **data.sizes(),
            Summary.SEED: cfg.trainer.seed,
            Summary.DEVICE: str(device),
            Summary.OVERRIDES: context.overrides,
            Summary.HYPERPARAMETERS: hyperparameters(cfg),
            Summary.STEPS: OmegaConf.to_container(cfg.steps) if "steps" in cfg else None,
        }
        if status != STATUS_FAILED and end.model is not None:
            try:
                save_weights(context.run_dir, end.model)
            except (OSError, RuntimeError) as error:  # a full disk (torch's zip writer raises RuntimeError)
                end.summary[Summary.WEIGHTS_ERROR] = (
                    f"{type(error).__name__}: {error} ({free_space(context.run_dir)})"
                )
                context.log.error("weights not saved: %s", end.summary[Summary.WEIGHTS_ERROR])
        summary_error = write_summary_or_log(context, end.summary)
        unwritten = summary_error is not None and status == STATUS_COMPLETED  # else one is being raised
        if unwritten:  # the run fails: its directory holds no outcome
            status, reason = STATUS_FAILED, f"{METRICS_JSON} not written: {summary_error}"
            end.summary.update({Summary.STATUS: status, Summary.REASON: reason})
        for callback in callbacks:
            callback.on_run_end(status)
        if context.trial is not None:  # the study keeps the outcome even when metrics.json could not
            try:
                with interrupts_held():  # whole, for the sweep to tell the study (give_up reads it)
                    set_trial_attrs(
                        context.trial.storage,
                        context.trial._trial_id,
                        {key: end.summary[key] for key in TRIAL_ATTRS},
                        job_end_attr(cfg, end.summary),
                    )
            except Exception as error:
                if status == STATUS_COMPLETED:
                    raise
                # What is being raised (Ctrl-C, the pruning, the failure) tells the sweep the outcome; raised
                # instead, this error made a sweep stopped by Ctrl-C run on, one more failed trial
                context.log.error("outcome not recorded on the trial: %s: %s", type(error).__name__, error)
        context.log.info("%s: %s", status, context.run_dir)
        if unwritten:
            raise summary_error


def job_end_attr(cfg: DictConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """How the run ended, as its sweep tells the study (the value this run returns, or pruned, or failed
    with its reason), recorded on its trial by the run itself for a sweep that ended before telling it
    (trial_bridge.job_end). An interrupted run records nothing: its trial is to run again."""
    status, reason = summary[Summary.STATUS], summary[Summary.REASON]
    if status == STATUS_COMPLETED:
        return {JOB_END: job_end(TrialState.COMPLETE, [summary[cfg.optimized_metric]])}
    if status in (STATUS_PRUNED, STATUS_FAILED):
        state = TrialState.PRUNED if status == STATUS_PRUNED else TrialState.FAIL
        return {JOB_END: job_end(state, reason=reason)}
    return {}


def write_summary_or_log(context: RunContext, summary: dict[str, Any]) -> OSError | None:
    """Write metrics.json; when it cannot be written (a full disk), log why and return the error, so that the
    run still ends its callbacks and records its outcome on its trial."""
    try:
        write_summary(context.run_dir, summary)
    except OSError as error:
        context.log.error("%s not written: %s (%s)", METRICS_JSON, error, free_space(context.run_dir))
        return error
    return None


def free_space(run_dir: Path) -> str:
    """What a refused write left, for its message: a full disk is the usual reason."""
    return f"{shutil.disk_usage(run_dir).free // 1024} kB free in {run_dir}"
