"""The model and the optimizer, instantiated from their config groups (torch's own classes, and the
app's models), with the classes' own checks of their arguments as one line (src.errors.class_arguments)."""

import functools
import json
from collections.abc import Iterable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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
        return class_partial(OmegaConf.to_container(optimizer_cfg, resolve=True))(parameters)


def class_partial(config: Any) -> Any:
    """instantiate(config) for the config of a class called later (`_partial_: true`), given as resolved
    values: made once per distinct config in this process. Hydra's instantiate copies and checks a config
    each time (1 to 1.5 ms), and a batch makes each trial's optimizer and scheduler twice (a probe's in
    src/schedules.constant_epochs, then its own), of configs its trials often share."""
    try:
        text = json.dumps(config, sort_keys=True)
    except TypeError:  # a value JSON cannot hold: made each time
        return instantiate(config, _execution_whitelist_=EXECUTION_WHITELIST)
    return _class_partial(text)


@functools.lru_cache(maxsize=1024)
def _class_partial(config_json: str) -> Any:
    return instantiate(json.loads(config_json), _execution_whitelist_=EXECUTION_WHITELIST)
