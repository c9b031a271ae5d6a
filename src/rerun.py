"""The command-line overrides that compose a finished run's config again: to rerun it with another seed.

A run's task overrides are not enough: a sweep preset (hparams_search=...) sets task values too, and
naming it again would bring its sweeper back. So the overrides are the run's config group choices (from
.hydra/hydra.yaml) without the preset, plus every value of its saved .hydra/config.yaml that differs from
what those choices compose (`++key=value`, quoted for Hydra's override grammar).
"""

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.conf_files import CONF, PRIMARY
from src.run_record import HYDRA_DIR

SWEEP_PRESET_GROUP = "hparams_search"


def rerun_overrides(run_dir: Path, leave_out: Iterable[str] = ()) -> list[str]:
    """Overrides that make `python -m src.train` compose the config run_dir ran with, except the keys in
    leave_out (the caller sets those itself)."""
    from hydra import compose, initialize_config_dir

    saved = OmegaConf.to_container(OmegaConf.load(run_dir / HYDRA_DIR / "config.yaml"), resolve=False)
    choices = OmegaConf.load(run_dir / HYDRA_DIR / "hydra.yaml").hydra.runtime.choices
    group_overrides = [
        f"{group}={choice}"
        for group, choice in choices.items()
        if not group.startswith("hydra/") and group != SWEEP_PRESET_GROUP and choice is not None
    ]
    with initialize_config_dir(config_dir=str(CONF)):
        base = OmegaConf.to_container(compose(PRIMARY, overrides=group_overrides), resolve=False)
    left_out = set(leave_out)
    saved_values, base_values = leaves(saved), leaves(base)
    return group_overrides + [
        f"++{key}={override_value(value)}"
        for key, value in saved_values.items()
        if key not in left_out and (key not in base_values or base_values[key] != value)
    ]


def leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to values; lists are values (an override sets a list as a whole)."""
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back with its type: strings single-quoted (a quote
    and the backslashes before it escaped), numbers, booleans and null bare, lists and dicts nested."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), str(value))
    return f"'{escaped}'"
