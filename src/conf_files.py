"""conf/ as files, read before Hydra composes anything: its groups, their options and what each option's YAML
says. The checks of the command line (src/command_line.py) and of a composed config (src/config.py) read
conf/ only through here. Each call reads the files again: callers cache what they derive."""

from pathlib import Path
from typing import Any

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARY = "train"  # conf/train.yaml, the config @hydra.main composes
# A `# @package _global_` option (a sweep preset) sets keys at the top of the config, not under its group.
GLOBAL_PACKAGE = "# @package _global_"


def is_group(name: str) -> bool:
    """One of this app's config groups (conf/<name>/); Hydra's own (conf/hydra/) is not."""
    return name.isidentifier() and name != "hydra" and (CONF / name).is_dir()


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def option_path(group: str, option: str) -> Path:
    return CONF / group / f"{option.strip()}.yaml"


def read(path: Path) -> dict[str, Any]:
    """A YAML file's mapping ({} for an empty or missing file)."""
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def primary() -> dict[str, Any]:
    return read(CONF / f"{PRIMARY}.yaml")


def primary_choices() -> dict[str, str | None]:
    """The option conf/train.yaml's defaults list chooses for each group (None: the group is optional)."""
    return {
        group: option
        for entry in primary()["defaults"]
        if isinstance(entry, dict)
        for group, option in entry.items()
    }


def group_bodies(group: str) -> list[dict[str, Any]]:
    """Each option's YAML of a group, in the order of the options' names."""
    return [read(option_path(group, option)) for option in group_options(group)]


def extended_options(body: dict[str, Any]) -> list[str]:
    """The options of the same group an option's defaults list extends (`defaults: [steplr_optuna]`)."""
    return [entry for entry in body.get("defaults", []) if isinstance(entry, str) and entry != "_self_"]


def option_bodies(group: str, option: str) -> list[dict[str, Any]]:
    """An option's YAML, after those of the options it extends, recursively."""
    body = read(option_path(group, option))
    return [*(b for name in extended_options(body) for b in option_bodies(group, name)), body]


def is_global(group: str, option: str) -> bool:
    path = option_path(group, option)
    return path.is_file() and path.read_text().startswith(GLOBAL_PACKAGE)


def without_composition(body: dict[str, Any]) -> dict[str, Any]:
    """A YAML's keys that become the config's (not its defaults list, not Hydra's own settings)."""
    return {key: value for key, value in body.items() if key not in ("defaults", "hydra")}
