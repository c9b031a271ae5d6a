"""One training run: data, model, optimizer and scheduler from the composed config, the loop, the run files.

Writes metrics.csv, metrics.json, model.pt (and TensorBoard events) into the run's Hydra output
directory, and returns the validation metric named by `optimized_metric` for sweepers. The config
is validated before this runs (src.train.main).
"""

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from hydra_plugins.optuna_pruning_sweeper.trial_bridge import current_trial
from src.config import EXECUTION_WHITELIST
from src.cpu_share import CpuShare, job_cpus
from src.data import MnistSplits, load_mnist
from src.hardware import resolve_device, threads_for_this_job
from src.loop import EpochRecord, fit
from src.pruning import first_prunable_epoch
from src.run_files import save_weights, write_epochs, write_step_lrs, write_summary
from src.run_record import STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_PRUNED
from src.runs import setting_overrides
from src.schedules import SCHEDULE_KEYS, Stepping, build_scheduler, constant_epochs, fill_in_steps
from src.shared_prefix import SharedPrefix

log = logging.getLogger(__name__)


def build(cfg: DictConfig, device: torch.device) -> tuple[Any, Any, Any]:
    """The model, optimizer and scheduler, instantiated from their config groups (torch's own classes)."""
    model = instantiate(cfg.model, _execution_whitelist_=EXECUTION_WHITELIST).to(device)
    optimizer = instantiate(cfg.optimizer, _execution_whitelist_=EXECUTION_WHITELIST)(model.parameters())
    return model, optimizer, build_scheduler(cfg.scheduler, optimizer)


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyperparameters as flat scalars (for TensorBoard's HParams and the sweep summary)."""
    flat: dict[str, Any] = {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "scheduler": cfg.scheduler._target_.rsplit(".", 1)[-1],
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


def load_data(cfg: DictConfig, device: torch.device) -> MnistSplits:
    data = load_mnist(
        root=Path(to_absolute_path(cfg.data.root)),
        download=cfg.data.download,
        offline_fallback=cfg.data.offline_fallback,
        val_size=cfg.data.val_size,
        split_seed=cfg.data.split_seed,
    ).to(device)
    return data.standardized() if cfg.data.normalize else data


def epoch_results(records: list[EpochRecord]) -> dict[str, Any]:
    """metrics.json's accuracies: the last epoch's, and the best validation epoch (None before any epoch)."""
    if not records:
        empty = dict.fromkeys(("val_acc", "best_val_acc", "best_epoch", "test_acc"), None)
        return {**empty, "epochs_completed": 0}
    final, best = records[-1], max(records, key=lambda r: r.val_acc)
    return {
        "val_acc": final.val_acc,
        "best_val_acc": best.val_acc,
        "best_epoch": best.epoch,
        "test_acc": final.test_acc,
        "epochs_completed": len(records),
    }


def train(cfg: DictConfig) -> float:
    started = time.perf_counter()
    share = CpuShare(job_cpus())
    share.register()  # one of the processes that train on this machine's CPUs (src/cpu_share.py)
    torch.set_num_threads(threads_for_this_job(cfg.trainer.num_threads, share))
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    device = resolve_device(cfg.trainer.device)
    data = load_data(cfg, device)
    fill_in_steps(cfg, len(data.train))  # the run's length in optimizer steps, for per-step schedulers
    torch.manual_seed(cfg.trainer.seed)
    model, optimizer, scheduler = build(cfg, device)
    stepping = Stepping(scheduler, cfg.scheduler, optimizer)
    generator = torch.Generator().manual_seed(cfg.trainer.seed)  # the training set's shuffles
    constant = constant_epochs(cfg)  # epochs before the schedule first changes an optimizer setting
    shared = SharedPrefix.for_run(cfg, data, device, run_dir, constant) if cfg.trainer.prefix_cache else None
    trial = current_trial()
    prune_from_epoch = (
        first_prunable_epoch(cfg.prune_from, constant, trial.params) if trial is not None else None
    )
    tensorboard = None
    if cfg.logger.name == "tensorboard":
        from src.tensorboard_log import TensorBoardLog, session_name

        job = str(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else "run"
        named_by = setting_overrides(hydra_cfg.overrides.task)
        tensorboard = TensorBoardLog(run_dir, hyperparameters(cfg), session_name(job, named_by))
    log.info(
        "data: %s (train %d, val %d, test %d) | device %s, %d threads",
        data.source,
        len(data.train),
        len(data.val),
        len(data.test),
        device,
        torch.get_num_threads(),
    )

    records: list[EpochRecord] = []
    step_lrs: list[float] = []  # a per-step schedule's rate at every optimizer step (lr_steps.csv)

    def on_epoch_end(record: EpochRecord) -> None:
        records.append(record)
        write_epochs(run_dir, records)
        if stepping.per_step:
            # A reused epoch (shared epochs) ran at its constant start rate throughout.
            epoch_lrs = stepping.take_step_lrs() or [record.lr] * cfg.steps.per_epoch
            step_lrs.extend(epoch_lrs)
            if tensorboard:
                tensorboard.log_steps(len(step_lrs) - len(epoch_lrs), epoch_lrs)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_acc %.2f%%  test_acc %.2f%%  lr %s  (%.2fs)",
            record.epoch,
            cfg.trainer.epochs,
            record.train_loss,
            record.val_acc,
            record.test_acc,
            f"{record.lr:.6g}" if record.lr == record.lr_last else f"{record.lr:.6g} to {record.lr_last:.6g}",
            record.epoch_time_s,
        )
        if tensorboard:
            tensorboard.log_epoch(record)
        if shared:
            shared.save(record.epoch, model, optimizer, generator, records)
        if trial is not None:
            trial.report(record.val_acc, record.epoch)
            if record.epoch >= prune_from_epoch and trial.should_prune():
                raise optuna.TrialPruned(f"pruned by the Optuna pruner after epoch {record.epoch}")

    status, reason = STATUS_COMPLETED, None
    try:
        reused = shared.resume(model, optimizer, stepping, generator, on_epoch_end) if shared else 0
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
    except optuna.TrialPruned as pruned:
        status, reason = STATUS_PRUNED, str(pruned)
        raise
    except Exception as error:
        status, reason = STATUS_FAILED, f"{type(error).__name__}: {error}"
        raise
    except BaseException as stop:  # Ctrl-C (KeyboardInterrupt), or an exit asked from outside
        status, reason = STATUS_INTERRUPTED, f"{type(stop).__name__}: stopped from outside"
        raise
    finally:
        summary = {
            "status": status,
            "reason": reason,
            **epoch_results(records),
            "epochs_planned": cfg.trainer.epochs,
            "epochs_reused": shared.reused_epochs if shared else 0,
            "reused_from": shared.reused_from if shared else None,
            "wall_time_s": time.perf_counter() - started,
            "data_source": data.source,
            **data.sizes(),
            "seed": cfg.trainer.seed,
            "device": str(device),
            "overrides": list(hydra_cfg.overrides.task),
            "hyperparameters": hyperparameters(cfg),
        }
        if step_lrs:
            write_step_lrs(run_dir, step_lrs)
        if status != STATUS_FAILED:
            try:
                save_weights(run_dir, model)
            except (OSError, RuntimeError) as error:  # a full disk (torch's zip writer raises RuntimeError)
                free_kb = shutil.disk_usage(run_dir).free // 1024
                summary["weights_error"] = f"{type(error).__name__}: {error} ({free_kb} kB free in {run_dir})"
                log.error("weights not saved: %s", summary["weights_error"])
        write_summary(run_dir, summary)
        if tensorboard:
            tensorboard.close(status)
        if trial is not None:
            for key in ("status", "test_acc", "epochs_completed", "epochs_planned", "epochs_reused"):
                trial.set_user_attr(key, summary[key])
        log.info("%s: %s", status, run_dir)
    return summary[cfg.optimized_metric]
