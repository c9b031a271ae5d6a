"""What a run does with each finished epoch, one small class per job: record it, log it, show it in
TensorBoard, store it for runs that share epochs, report it to the Optuna trial.

Each callback gets every finished epoch (its metrics.csv row and, for a per-step schedule, the rate of
each of its optimizer steps) and the run's final status. A new logger is one class here and one YAML in
conf/logger/ whose `epoch_callback` names it (conf/logger/tensorboard.yaml). The same callbacks serve a
run trained alone (src/run.py) and one trained in a batch with others (src/batched_runs.py).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna

from hydra_plugins.batched_launcher.collector import imports_without_collector
from hydra_plugins.optuna_pruning_sweeper.child_jobs import interrupts_held
from hydra_plugins.optuna_pruning_sweeper.storage import report_together
from src.run_files import write_epochs, write_step_lrs
from src.run_record import EpochRecord


class EpochCallback(Protocol):
    def on_epoch_end(self, record: EpochRecord, step_lrs: list[float]) -> None: ...

    def on_run_end(self, status: str) -> None: ...


@dataclass
class RunContext:
    """Where a run writes and whom it tells: its directory, its name among the sweep's jobs, the overrides
    that made it, its Optuna trial (None outside an Optuna sweep) and its log."""

    run_dir: Path
    job: str  # "run" for a single run, else the job number
    overrides: list[str]
    trial: optuna.Trial | None
    log: logging.Logger


@dataclass
class History:
    """The run's epochs on disk as they finish: metrics.csv after every epoch, lr_steps.csv (a per-step
    schedule's every rate) at the end."""

    run_dir: Path
    records: list[EpochRecord] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)

    def on_epoch_end(self, record: EpochRecord, step_lrs: list[float]) -> None:
        self.records.append(record)
        self.step_lrs.extend(step_lrs)
        write_epochs(self.run_dir, self.records)

    def on_run_end(self, status: str) -> None:
        if self.step_lrs:
            write_step_lrs(self.run_dir, self.step_lrs)


@dataclass
class ProgressLog:
    """One log line per epoch."""

    log: logging.Logger
    epochs: int

    def on_epoch_end(self, record: EpochRecord, step_lrs: list[float]) -> None:
        lr = f"{record.lr:.6g}" if record.lr == record.lr_last else f"{record.lr:.6g} to {record.lr_last:.6g}"
        self.log.info(
            "epoch %d/%d  train_loss %.4f  val_acc %.2f%%  test_acc %.2f%%  lr %s  (%.2fs)",
            record.epoch,
            self.epochs,
            record.train_loss,
            record.val_acc,
            record.test_acc,
            lr,
            record.epoch_time_s,
        )

    def on_run_end(self, status: str) -> None:
        pass


class TensorBoardEpochs:
    """TensorBoard event files in the run directory: the epoch's scalars, a per-step schedule's lr per
    step, the HParams session with the run's status (src/tensorboard_log.py)."""

    def __init__(self, context: RunContext, hparams: dict[str, Any]) -> None:
        # The first one imports TensorBoard: 0.16 s with the collector walking the objects of torch (a batched
        # sweep's launch process imports it once its batch is whole), 0.05 s with the collector paused
        with imports_without_collector():
            from src.runs import setting_overrides
            from src.tensorboard_log import TensorBoardLog, session_name

        self.board = TensorBoardLog(
            context.run_dir, hparams, session_name(context.job, setting_overrides(context.overrides))
        )
        self.steps = 0

    def on_epoch_end(self, record: EpochRecord, step_lrs: list[float]) -> None:
        self.board.log_epoch(record)
        if step_lrs:
            self.board.log_steps(self.steps, step_lrs)
            self.steps += len(step_lrs)

    def on_run_end(self, status: str) -> None:
        self.board.close(status)


@dataclass
class ReportToOptuna:
    """Every epoch's validation accuracy to the run's Optuna trial; stops the run (optuna.TrialPruned) when
    the sweep's pruner says so, from epoch `prune_from_epoch` on (src/pruning.py)."""

    trial: optuna.Trial
    prune_from_epoch: int
    reported_epoch: int = 0  # the last epoch report_epoch_together recorded for this trial

    def on_epoch_end(self, record: EpochRecord, step_lrs: list[float]) -> None:
        with interrupts_held():  # a Ctrl-C is taken once the study's reply is in
            if record.epoch != self.reported_epoch:
                self.trial.report(record.val_acc, record.epoch)
            pruned = record.epoch >= self.prune_from_epoch and self.trial.should_prune()
        if pruned:
            raise optuna.TrialPruned(f"pruned by the Optuna pruner after epoch {record.epoch}")

    def on_run_end(self, status: str) -> None:
        pass


def report_epoch_together(callbacks: list[list[EpochCallback]], records: list[EpochRecord]) -> None:
    """The epoch's validation accuracy of several runs (trained together: src/batched_runs.py) to their
    trials in one write (report_together), before each run's callbacks get the epoch: their ReportToOptuna
    then only asks the pruner. When the one write fails, each reports on its own, as a run alone does."""
    reporters = [
        (callback, record)
        for run_callbacks, record in zip(callbacks, records, strict=True)
        for callback in run_callbacks
        if isinstance(callback, ReportToOptuna)
    ]
    with interrupts_held():
        reported = reporters and report_together([(r.trial, rec.val_acc, rec.epoch) for r, rec in reporters])
    if reported:
        for reporter, record in reporters:
            reporter.reported_epoch = record.epoch
