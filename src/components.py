"""The model and the optimizer, instantiated from their config groups (torch's own classes, and the
app's models), with the classes' own checks of their arguments as one line (src.errors.class_arguments)."""

from collections.abc import Iterable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.config import EXECUTION_WHITELIST
from src.dynamo_on_demand import defer_dynamo_import
from src.errors import class_arguments

defer_dynamo_import()  # before this process makes any optimizer


def build_model(model_cfg: DictConfig) -> torch.nn.Module:
    with class_arguments("model", model_cfg._target_):
        return instantiate(model_cfg, _execution_whitelist_=EXECUTION_WHITELIST)


def build_optimizer(optimizer_cfg: DictConfig, parameters: Iterable[Any]) -> torch.optim.Optimizer:
    """The optimizer over `parameters` (its config is a partial: the class and its settings)."""
    with class_arguments("optimizer", optimizer_cfg._target_):
        return instantiate(optimizer_cfg, _execution_whitelist_=EXECUTION_WHITELIST)(parameters)
