"""Checks of a composed config before anything runs: one clear error per bad value.

Hydra composes plain YAML, so `scheduler.step_size=2.5` or `scheduler.gamma=abc` reach us as they
were typed; every value the run depends on is checked here, at the boundary.
"""

import functools
import math
from collections.abc import Iterator
from numbers import Real
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from src import conf_files
from src.errors import ConfigError, UserInputError
from src.pruning import PRUNE_FROM
from src.run_record import OPTIMIZED_METRICS, class_name
from src.schedule_config import check_stepping

# The only callables a config may instantiate (besides torch's: the app's models, its Hydra callbacks, and the
# schedule families' search space hook). Passed to @hydra.main(execution_whitelist=...) and to every
# instantiate() call, so that the guard holds in joblib worker processes too.
EXECUTION_WHITELIST = (
    "torch.optim.*",
    "src.models.*",
    "src.callbacks.*",
    "src.epoch_callbacks.*",
    "src.schedule_families.family_parameters",
)

# Each group's _target_ must name a class under its package; what the error says is allowed.
TARGETS = {
    "model": ("src.models.", "a model class under src.models (SimpleNet, MLP, CNN)"),
    "optimizer": ("torch.optim.", "a torch.optim optimizer class (torch.optim.Adam, torch.optim.SGD, ...)"),
    "scheduler": ("torch.optim.lr_scheduler.", "a torch.optim.lr_scheduler class (StepLR, ...)"),
    "logger.epoch_callback": ("src.epoch_callbacks.", "an epoch callback class under src.epoch_callbacks"),
}
DEVICES = ("auto", "cpu", "cuda")
# Groups that hold the app's own settings (not a class's arguments): a key they don't define is a typo.
GROUPS_OF_SETTINGS = ("trainer", "data", "logger")
STACKING = ("auto", "always", "never")  # trainer.stacking (src/batched_runs.py)
# torch starts an OS thread per thread asked for: trainer.num_threads=100000 ended in a MemoryError traceback.
MAX_THREADS = 1024


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def require_int(key: str, value: object, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}")


MAX_SEED = 2**64 - 1  # torch.manual_seed's and torch.Generator's largest seed


def require_seed(key: str, value: object) -> None:
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise ConfigError(key, value, f"an integer in [0, {MAX_SEED}] (2**64 - 1, torch's largest seed)")


def require_positive(key: str, value: object) -> None:
    if not _is_number(value) or value <= 0:
        raise ConfigError(key, value, "a number > 0")


def require_decay_factor(key: str, value: object) -> None:
    if not _is_number(value) or not 0 < value <= 1:
        raise ConfigError(key, value, "a number in (0, 1]")


def require_bool(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")


def _check_target(group: str, node: DictConfig) -> str:
    """The class name of the group's _target_, which must lie under the group's package."""
    prefix, allowed = TARGETS[group]
    target = node.get("_target_")
    scheduler_prefix = TARGETS["scheduler"][0]
    if (
        not isinstance(target, str)
        or not target.startswith(prefix)
        or (group == "optimizer" and target.startswith(scheduler_prefix))
    ):
        raise ConfigError(f"{group}._target_", target, allowed)
    return class_name(target)


def _check_scheduler(cfg: DictConfig) -> None:
    node = cfg.scheduler
    name = _check_target("scheduler", node)
    check_stepping(cfg, name)
    if name == "StepLR":
        require_int("scheduler.step_size", node.get("step_size"), 1)
    if name in ("StepLR", "MultiStepLR", "ExponentialLR"):
        require_decay_factor("scheduler.gamma", node.get("gamma"))
    if name == "MultiStepLR":
        milestones = node.get("milestones")
        if (
            milestones is None
            or not all(_is_int(m) and m >= 1 for m in milestones)
            or list(milestones) != sorted(set(milestones))
        ):
            raise ConfigError("scheduler.milestones", milestones, "increasing integers >= 1, e.g. [2,4]")
    if name == "CosineAnnealingLR":
        require_int("scheduler.T_max", node.get("T_max"), 1)
    if name == "ConstantLR":
        require_decay_factor("scheduler.factor", node.get("factor"))
    if name == "OneCycleLR":
        require_positive("scheduler.max_lr", node.get("max_lr"))
    if name == "CyclicLR":
        require_positive("scheduler.base_lr", node.get("base_lr"))
        require_positive("scheduler.max_lr", node.get("max_lr"))
    if name == "ReduceLROnPlateau" and not (_is_number(node.get("factor")) and 0 < node.get("factor") < 1):
        raise ConfigError("scheduler.factor", node.get("factor"), "a number in (0, 1)")
    if name == "ReduceLROnPlateau":
        require_int("scheduler.patience", node.get("patience"), 0)


@functools.cache
def group_keys(group: str) -> frozenset[str]:
    """The keys a group's options define (conf/<group>/*.yaml): the settings it has."""
    return frozenset(key for body in conf_files.group_bodies(group) for key in body)


@functools.cache
def required_keys() -> tuple[str, ...]:
    """What every run reads, which `~model` or `~trainer.epochs` would remove: the groups conf/train.yaml's
    defaults choose an option of, its own keys (`steps.total`) and the settings every option of a group of
    settings defines (`trainer.epochs`, `logger.name`). A class's arguments (`~optimizer.fused`) may go."""
    keys = [group for group, option in conf_files.primary_choices().items() if option is not None]
    keys += nested_keys(conf_files.without_composition(conf_files.primary()))
    for group in GROUPS_OF_SETTINGS:
        options = conf_files.group_bodies(group)
        keys += [f"{group}.{key}" for key in options[0] if all(key in option for option in options)]
    return tuple(keys)


def nested_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += nested_keys(value, f"{prefix}{key}.")
    return keys


def check_nothing_required_removed(cfg: DictConfig) -> None:
    for key in required_keys():
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and name not in node:
            options = conf_files.group_options(key)
            choose = f": one of {', '.join(options)} (conf/{key}/)" if options else ""
            raise UserInputError(f"~{key} is not allowed: every run needs {key}{choose}")


def check_known_keys(cfg: DictConfig) -> None:
    """No setting the app does not have: `+trainer.foo=1` would be accepted and silently do nothing."""
    for group in GROUPS_OF_SETTINGS:
        known = group_keys(group)
        for key in cfg[group]:
            if key not in known:
                allowed = f"not a {group} setting (they are {', '.join(sorted(known))})"
                raise ConfigError(f"{group}.{key}", cfg[group]._get_node(key)._value(), allowed)


def values_as_written(node: DictConfig | ListConfig, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value as written: an interpolation not resolved) of each value, the hydra node aside."""
    for key in node if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        where = f"{path}{key}"
        if isinstance(child, DictConfig | ListConfig):
            if where != "hydra":
                yield from values_as_written(child, f"{where}.")
        else:
            yield where, child._value()


def check_no_hydra_node_interpolation(cfg: DictConfig) -> None:
    """`trainer.seed=${hydra.job.num}`: Hydra removes the hydra node from the config a run gets, so such an
    interpolation fails there with a traceback; Hydra's resolver reads it instead (`${hydra:job.num}`)."""
    for key, raw in values_as_written(cfg):
        if isinstance(raw, str) and "${hydra." in raw:
            resolver = raw.replace("${hydra.", "${hydra:")
            allowed = (
                f"write {resolver} (a run's config has no hydra node to interpolate; the resolver reads it)"
            )
            raise ConfigError(key, raw, allowed)


def check_targets(node: DictConfig, path: str = "") -> None:
    """Only the model, optimizer and scheduler groups name a class: a `_target_` anywhere else in the
    task config (`+model.x={_target_: os.system}`) would be built by nothing, or by something it shouldn't."""
    for key in node:
        child = node._get_node(key)
        where = f"{path}{key}"
        if key == "_target_" and path.rstrip(".") not in TARGETS:
            raise ConfigError(
                where,
                child._value(),
                "a _target_ is allowed only as model, optimizer, scheduler or logger.epoch_callback's",
            )
        if isinstance(child, DictConfig) and where != "hydra":
            check_targets(child, f"{where}.")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that would make the run fail or mean nothing."""
    check_nothing_required_removed(cfg)
    check_no_hydra_node_interpolation(cfg)
    check_known_keys(cfg)
    check_targets(cfg)
    trainer = cfg.trainer
    require_int("trainer.epochs", trainer.epochs, 1)
    require_int("trainer.batch_size", trainer.batch_size, 1)
    require_int("trainer.eval_batch_size", trainer.eval_batch_size, 1)
    require_seed("trainer.seed", trainer.seed)
    if trainer.device not in DEVICES:
        raise ConfigError("trainer.device", trainer.device, f"one of {', '.join(DEVICES)}")
    if trainer.num_threads is not None and (
        not _is_int(trainer.num_threads) or not 1 <= trainer.num_threads <= MAX_THREADS
    ):
        allowed = f"null or an integer in [1, {MAX_THREADS}]"
        raise ConfigError("trainer.num_threads", trainer.num_threads, allowed)
    if trainer.prefix_cache is not None and (
        not isinstance(trainer.prefix_cache, str) or not trainer.prefix_cache
    ):
        raise ConfigError("trainer.prefix_cache", trainer.prefix_cache, "null or a directory path")
    if trainer.stacking not in STACKING:
        raise ConfigError("trainer.stacking", trainer.stacking, f"one of {', '.join(STACKING)}")
    _check_target("model", cfg.model)
    _check_target("optimizer", cfg.optimizer)
    require_positive("optimizer.lr", cfg.optimizer.get("lr"))
    _check_scheduler(cfg)
    require_int("data.val_size", cfg.data.val_size, 1)
    require_seed("data.split_seed", cfg.data.split_seed)
    for flag in ("download", "offline_fallback", "normalize"):
        require_bool(f"data.{flag}", cfg.data[flag])
    if cfg.prune_from not in PRUNE_FROM:
        raise ConfigError("prune_from", cfg.prune_from, f"one of {', '.join(PRUNE_FROM)}")
    if cfg.optimized_metric not in OPTIMIZED_METRICS:
        raise ConfigError("optimized_metric", cfg.optimized_metric, f"one of {', '.join(OPTIMIZED_METRICS)}")
    require_bool("overwrite", cfg.get("overwrite", False))
    if cfg.logger.get("epoch_callback") is not None:
        _check_target("logger.epoch_callback", cfg.logger.epoch_callback)
    if cfg.logger.name not in ("tensorboard", "none"):
        raise ConfigError("logger.name", cfg.logger.name, "tensorboard or none (logger=tensorboard|none)")
