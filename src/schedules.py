"""Learning-rate schedules: when a scheduler steps, how long a run is in steps, and what its lr does.

A scheduler config (conf/scheduler/*.yaml) is torch's class with its arguments, plus two keys of ours,
Lightning's convention, which are not passed to the class:

    interval: epoch | step       step once per epoch (after its evaluation) or after every optimizer step
    monitor: val_loss | val_acc  a metric-driven scheduler (ReduceLROnPlateau), stepped with this metric

A run knows its length only once its data is loaded; it then fills in the config's `steps` node
(steps.per_epoch, steps.total, steps.warmup), so a per-step scheduler sizes itself from the run:
`total_steps: ${steps.total}` (OneCycleLR). A scheduler whose `schedulers` key lists schedulers
(SequentialLR, ChainedScheduler) gets them built on the same optimizer.

Which epochs train with every optimizer setting as configured (lr0, betas, momentum) is found by stepping
the configured scheduler on a probe optimizer of the run's class (constant_epochs): shared epochs and the
pruner's first epoch follow from it for any scheduler, with no list of names.
"""

import math
import warnings
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from src.components import build_optimizer, class_partial
from src.config import EXECUTION_WHITELIST
from src.errors import ConfigError, class_arguments
from src.schedule_config import COMPOSITE_KEY, SCHEDULE_KEYS, interval, monitor, uses_warmup


def fill_in_steps(cfg: DictConfig, n_train: int) -> None:
    """Set steps.per_epoch and steps.total from the training set and batch size, steps.warmup (unless
    given) from steps.warmup_epochs, and steps.after_warmup. A warmup as long as the run is refused."""
    per_epoch = math.ceil(n_train / cfg.trainer.batch_size)
    with open_dict(cfg):
        cfg.steps.per_epoch = per_epoch
        cfg.steps.total = per_epoch * cfg.trainer.epochs
        if cfg.steps.get("warmup") is None:
            cfg.steps.warmup = max(1, round(cfg.steps.warmup_epochs * per_epoch))
        if uses_warmup(cfg.scheduler) and not 0 < cfg.steps.warmup < cfg.steps.total:
            raise ConfigError(
                "steps.warmup",
                cfg.steps.warmup,
                f"between 1 and {cfg.steps.total - 1}: the run has {cfg.steps.total} steps "
                f"({cfg.trainer.epochs} epochs of {per_epoch})",
            )
        cfg.steps.after_warmup = max(0, cfg.steps.total - cfg.steps.warmup)


def build_scheduler(scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer) -> Any:
    """torch's scheduler from its config, on this optimizer: our keys left out, the schedulers it lists
    (SequentialLR's) built first on the same optimizer."""
    resolved = OmegaConf.to_container(scheduler_cfg, resolve=True)  # steps.* are the run's root config's
    class_args = {k: v for k, v in resolved.items() if k not in (*SCHEDULE_KEYS, COMPOSITE_KEY)}
    with class_arguments("scheduler", str(resolved.get("_target_"))):
        scheduler = class_partial(class_args)
        if COMPOSITE_KEY not in resolved:
            return scheduler(optimizer)
        parts = [
            instantiate(part, optimizer, _execution_whitelist_=EXECUTION_WHITELIST)
            for part in resolved[COMPOSITE_KEY]
        ]
        return scheduler(optimizer=optimizer, schedulers=parts)


def optimizer_settings(optimizer: torch.optim.Optimizer, keys: list[set[str]] | None = None) -> list[dict]:
    """What a scheduler may change: each param group's settings (lr, and momentum or betas for OneCycleLR
    and CyclicLR), not its parameters; only `keys` of each group when given."""
    return [
        {k: v for k, v in group.items() if k != "params" and (keys is None or k in keys[i])}
        for i, group in enumerate(optimizer.param_groups)
    ]


def constant_epochs(cfg: DictConfig) -> int:
    """How many epochs from the start train with the optimizer's settings exactly as configured (lr0, its
    betas or momentum): the epochs that runs with other schedules may share. Found by stepping the configured
    scheduler on a probe optimizer of the run's class; 0 for a metric-driven scheduler (its steps depend on
    the run's own results). cfg.steps must be filled in (fill_in_steps)."""
    if monitor(cfg.scheduler) is not None:
        return 0
    probe_parameter = torch.zeros(1, requires_grad=True)
    probe = build_optimizer(cfg.optimizer, [probe_parameter])
    configured = optimizer_settings(probe)  # before the scheduler sets its own start (OneCycleLR does)
    keys = [set(group) for group in configured]
    with warnings.catch_warnings():  # stepping a scheduler without optimizer steps warns
        warnings.simplefilter("ignore", UserWarning)
        scheduler = build_scheduler(cfg.scheduler, probe)
        steps_per_epoch = cfg.steps.per_epoch if interval(cfg.scheduler) == "step" else 1
        for epoch in range(cfg.trainer.epochs):
            for step in range(steps_per_epoch):
                if optimizer_settings(probe, keys) != configured:
                    return epoch
                if step < steps_per_epoch - 1 or epoch < cfg.trainer.epochs - 1:
                    scheduler.step()
    return cfg.trainer.epochs


class Stepping:
    """When the run's scheduler steps; the learning rate of each optimizer step (a per-step schedule's
    epoch curve: TensorBoard and lr_steps.csv)."""

    def __init__(self, scheduler: Any, scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer) -> None:
        self.scheduler = scheduler
        self.per_step = interval(scheduler_cfg) == "step"
        self.monitor = monitor(scheduler_cfg)
        self.optimizer = optimizer
        self.last_step_lr = self.lr
        self.step_lrs: list[float] = []  # per-step schedules only: the rates since the last epoch's end

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def after_optimizer_step(self) -> None:
        self.last_step_lr = self.lr
        if self.per_step:
            self.step_lrs.append(self.last_step_lr)
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if self.monitor is not None:
            self.scheduler.step(metrics[self.monitor])
        elif not self.per_step:
            self.scheduler.step()

    def take_step_lrs(self) -> list[float]:
        taken, self.step_lrs = self.step_lrs, []
        return taken

    def catch_up(self, epochs: int, steps_per_epoch: int) -> None:
        """Step as a run that trained `epochs` epochs would have (shared epochs: the restored state)."""
        for _ in range(epochs * (steps_per_epoch if self.per_step else 1)):
            self.scheduler.step()
