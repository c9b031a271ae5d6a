"""Structured configs: the optuna_pruning sweeper and its pruners (group hydra/sweeper/pruner)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING


@dataclass
class PrunerConfig:
    _target_: str = MISSING


@dataclass
class NopPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.NopPruner.html"""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.MedianPruner.html"""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.PercentilePruner.html"""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.SuccessiveHalvingPruner.html"""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.HyperbandPruner.html"""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class PruningOptunaSweeperConf(OptunaSweeperConf):
    """The upstream sweeper's options, plus `pruner`; failures are counted over the whole study."""

    _target_: str = "hydra_plugins.optuna_pruning_sweeper.sweeper.PruningOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    pruner: PrunerConfig = MISSING
    # The search space, flat (`scheduler.gamma: interval(0.1, 0.9)`, as upstream) or nested
    # (`scheduler: {gamma: ...}`); nested keys can be overridden on the command line as
    # hydra.sweeper.params.scheduler.gamma=..., which a flat dotted key cannot.
    params: dict[str, Any] | None = None
    # Trials asked at once (run in parallel by a parallel launcher such as joblib).
    n_jobs: int = 1
    # The sweep stops once failed trials exceed this share of n_trials (pruned trials never count).
    max_failure_rate: float = 0.25
    # Each worker records a heartbeat for its running trials every heartbeat_interval seconds; a trial
    # without one for grace_period seconds belongs to a dead worker: it is failed and its parameters run
    # again (workers.py). Integers, as Optuna's RDBStorage takes them.
    heartbeat_interval: int = 10
    grace_period: int = 60
    # Names of the study's objectives, shown by optuna-dashboard instead of "Objective 0".
    metric_names: list[str] | None = None


def register() -> None:
    store = ConfigStore.instance()
    store.store(
        group="hydra/sweeper", name="optuna_pruning", node=PruningOptunaSweeperConf, provider="optuna_pruning"
    )
    pruners = {
        "none": NopPrunerConfig,
        "median": MedianPrunerConfig,
        "percentile": PercentilePrunerConfig,
        "successive_halving": SuccessiveHalvingPrunerConfig,
        "hyperband": HyperbandPrunerConfig,
    }
    for name, node in pruners.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="optuna_pruning")


register()
