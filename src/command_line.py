"""Checks of the command line itself, before Hydra composes anything.

Hydra answers an unknown config group option (`model=resnet`, `hydra/sweeper/sampler=tpee`) with a dozen
lines (the options, then its config search path), two of its commands at once (`--multirun --cfg job`) with
a traceback, and instantiates hydra.callbacks before any callback of ours could check them. These are
checked here, on the words as typed, so they fail in one line like every other bad value.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra

from src.errors import ConfigError, UserInputError

CONF = Path(__file__).resolve().parents[1] / "conf"
# Where an override may name a class (`..._target_=...`), and the classes it may name there.
TARGET_PLACES = {
    "hydra.callbacks.NAME": ("src.callbacks.",),
    "hydra.sweeper.sampler": ("optuna.samplers.", "hydra_plugins.hydra_optuna_sweeper."),
    "hydra.sweeper.pruner": ("optuna.pruners.",),
    "hydra.sweeper.storage": ("optuna.storages.",),
    "logger.epoch_callback": ("src.epoch_callbacks.",),
    "model": ("src.models.",),
    "optimizer": ("torch.optim.",),
    "scheduler": ("torch.optim.lr_scheduler.",),
}


def target_place(node: str) -> str | None:
    """The entry of TARGET_PLACES for the node whose _target_ is set (a callback has a name of its own)."""
    parts = node.split(".")
    if len(parts) == 3 and parts[:2] == ["hydra", "callbacks"]:
        return "hydra.callbacks.NAME"
    return node if node in TARGET_PLACES and node != "hydra.callbacks.NAME" else None


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def check_group_option(key: str, value: str) -> None:
    """`group=option` for one of this app's config groups (conf/<group>/) names an existing option; so does
    each option of a sweep over the group (`scheduler=step_lr,onecycle`). Sweep functions such as
    `choice(...)` are left to Hydra."""
    if (CONF / key).is_dir() and key != "hydra":
        check_option(key, value, group_options(key), f" (conf/{key}/)")


def check_option(key: str, value: str, options: list[str], where: str = "") -> None:
    """Each option of `value` (one, or a sweep's `a,b`) is one of `options` (Hydra refuses `model=null` and
    `model=` with a traceback or a dozen lines); sweep functions such as `choice(...)` are left to Hydra."""
    if "(" in value:
        return
    for option in value.split(","):
        if option.strip() not in options:
            raise ConfigError(key, value, f"one of {', '.join(options)}{where}")


def hydra_group_options(group: str) -> list[str]:
    """The options of a Hydra group (`hydra/sweeper/sampler`): those its plugins register, those Hydra ships
    as files and those of conf/; empty for a group none of them has. Registering the plugins' configs
    imports the plugins, as Hydra does right after."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()
    node: Any = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    registered = {name.removesuffix(".yaml") for name, entry in node.items() if not isinstance(entry, dict)}
    shipped = Path(hydra.__file__).parent / "conf" / group
    files = {path.stem for directory in (shipped, CONF / group) for path in directory.glob("*.yaml")}
    return sorted(registered | files)


def check_hydra_group_option(group: str, value: str) -> None:
    """`hydra/<group>=option` names an option the group has (Hydra's own answer lists them over a dozen
    lines, with its config search path); sweeps and groups unknown here are left to Hydra."""
    if "," in value:  # a sweep over Hydra's own config, which Hydra refuses in its own words
        return
    if options := hydra_group_options(group):
        check_option(group, value, options)


def check_target(key: str, value: str) -> None:
    """An override that sets a `_target_` names a class that may be built where it is set."""
    place = target_place(key.removesuffix("._target_"))
    if place is None:
        raise ConfigError(key, value, f"a _target_ may be set only on {', '.join(TARGET_PLACES)}")
    allowed = TARGET_PLACES[place]
    if not value.startswith(allowed):
        raise ConfigError(key, value, f"a class under {' or '.join(allowed)}")


# Hydra's commands (its flags, long and short): one at most, or Hydra raises a ValueError with a traceback.
COMMANDS = {
    "--run": ("--run", "-r"),
    "--multirun": ("--multirun", "-m"),
    "--cfg": ("--cfg", "-c"),
    "--info": ("--info", "-i"),
    "--shell-completion": ("--shell-completion", "-sc"),
}


def check_one_command(arguments: Sequence[str]) -> None:
    def given(flags: tuple[str, ...]) -> bool:
        return any(a in flags or a.startswith(tuple(f"{flag}=" for flag in flags)) for a in arguments)

    commands = [command for command, flags in COMMANDS.items() if given(flags)]
    if len(commands) > 1:
        allowed = ", ".join(COMMANDS)
        raise UserInputError(f"{' and '.join(commands)} cannot be combined: give one of {allowed}")


def check_command_line(arguments: Sequence[str]) -> None:
    """Raise UserInputError for the first thing on the command line that Hydra would report in many
    lines, or too late."""
    check_one_command(arguments)
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue
        key, _, value = argument.lstrip("+~").partition("=")
        value = value.strip().strip("'\"")
        if key.endswith("_target_"):
            check_target(key, value)
        elif "." not in key and "/" not in key:
            check_group_option(key, value)
        elif key.startswith("hydra/") and "." not in key:
            check_hydra_group_option(key, value)
