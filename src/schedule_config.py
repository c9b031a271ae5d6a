"""A scheduler config's keys of ours and their checks (torch-free: the config is checked before torch loads).

conf/scheduler/*.yaml hold torch's class and its arguments, plus (Lightning's convention, not passed to the
class) `interval: epoch | step` and, for a metric-driven scheduler, `monitor: val_loss | val_acc`. A list
under `schedulers` (SequentialLR, ChainedScheduler) holds scheduler configs built on the same optimizer.
"""

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.run_record import Column, class_name

SCHEDULE_KEYS = ("interval", "monitor")  # ours, not the scheduler class's arguments
INTERVALS = ("epoch", "step")
# The metrics a scheduler may follow, and their direction.
MONITORS = {Column.VAL_LOSS: "min", Column.VAL_ACC: "max"}
COMPOSITE_KEY = "schedulers"
SCHEDULER_PACKAGE = "torch.optim.lr_scheduler."
METRIC_DRIVEN = ("ReduceLROnPlateau",)
# torch's schedulers that set the optimizer's learning rate themselves as they are made, from these arguments
# of theirs: the lr the optimizer was given is not used (tests/test_schedules.py checks this against torch)
SETS_ITS_OWN_LR = {"OneCycleLR": ("max_lr", "div_factor"), "CyclicLR": ("base_lr", "max_lr")}
LR_OVERRIDE = "optimizer.lr="


def interval(scheduler_cfg: DictConfig) -> str:
    return scheduler_cfg.get("interval", "epoch")


def monitor(scheduler_cfg: DictConfig) -> str | None:
    return scheduler_cfg.get("monitor")


def lr_not_used(cfg: DictConfig, overrides: list[str]) -> str | None:
    """Why the optimizer.lr a run was given (among its overrides: on the command line, or chosen by a
    sweep) does nothing, when its scheduler sets the rate from its own arguments; None otherwise. Runs of a
    sweep over optimizer.lr with such a scheduler train alike."""
    scheduler = class_name(cfg.scheduler.get("_target_", ""))
    own = SETS_ITS_OWN_LR.get(scheduler)
    if own is None or not any(override.lstrip("+").startswith(LR_OVERRIDE) for override in overrides):
        return None
    keys = " and ".join(f"scheduler.{key}" for key in own)
    return (
        f"optimizer.lr={cfg.optimizer.lr} is not used: {scheduler} sets the learning rate "
        f"itself, from {keys} (set or sweep those instead)"
    )


def uses_warmup(scheduler_cfg: DictConfig) -> bool:
    """Whether the scheduler config refers to the run's warmup (steps.warmup or steps.after_warmup)."""
    text = OmegaConf.to_yaml(scheduler_cfg)
    return "steps.warmup" in text or "steps.after_warmup" in text


def check_stepping(cfg: DictConfig, class_name: str) -> None:
    """interval, monitor, the schedulers a composite lists, and a warmup shorter than the run."""
    node = cfg.scheduler
    if interval(node) not in INTERVALS:
        raise ConfigError("scheduler.interval", interval(node), " or ".join(INTERVALS))
    watched = monitor(node)
    if class_name in METRIC_DRIVEN:
        if watched not in MONITORS:
            raise ConfigError("scheduler.monitor", watched, f"a recorded metric: {' or '.join(MONITORS)}")
        if interval(node) != "epoch":
            raise ConfigError(
                "scheduler.interval", interval(node), f"epoch ({class_name} follows an epoch metric)"
            )
        if node.get("mode") != MONITORS[watched]:
            raise ConfigError(
                "scheduler.mode", node.get("mode"), f"{MONITORS[watched]} (to follow {watched})"
            )
    elif watched is not None:
        raise ConfigError(
            "scheduler.monitor", watched, f"null: only {', '.join(METRIC_DRIVEN)} follows a metric"
        )
    for index, part in enumerate(node.get(COMPOSITE_KEY) or []):
        target = part.get("_target_") if isinstance(part, DictConfig) else None
        if not isinstance(target, str) or not target.startswith(SCHEDULER_PACKAGE):
            raise ConfigError(
                f"scheduler.{COMPOSITE_KEY}[{index}]._target_", target, f"a {SCHEDULER_PACKAGE} class"
            )
    if uses_warmup(node) and cfg.steps.get("warmup") is None:
        warmup_epochs = cfg.steps.get("warmup_epochs")
        if not isinstance(warmup_epochs, int | float) or not 0 < warmup_epochs < cfg.trainer.epochs:
            raise ConfigError(
                "steps.warmup_epochs",
                warmup_epochs,
                f"more than 0, fewer than trainer.epochs={cfg.trainer.epochs} (a warmup ends before the run)",
            )
