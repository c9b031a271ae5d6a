"""A finished run's config as a config file that composes it again: to rerun it with another seed.

A run's task overrides are not enough: a sweep preset (hparams_search=...) sets task values too, and
naming it again would bring its sweeper back. So the file is the run's config group choices (from
.hydra/hydra.yaml, as `override /group: option` in its defaults list) without the preset, plus every value
of its saved .hydra/config.yaml that differs from what those choices compose. It is a `_global_` option of
a config group of its own in a directory given to `python -m src.train --config-dir`, so that one multirun
reruns several runs' configs (`+GROUP=a,b trainer.seed=1,2`), each over the same seeds.
"""

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from src import conf_files
from src.atomic_files import write_text_atomically
from src.run_record import HYDRA_DIR
from src.runs import RERUN_GROUP

SWEEP_PRESET_GROUP = "hparams_search"


def rerun_config(run_dir: Path, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """A `_global_` config that, added to conf/train.yaml, composes the config run_dir ran with, except the
    keys in leave_out (the caller sets those itself)."""
    from hydra import compose, initialize_config_dir

    saved = OmegaConf.to_container(OmegaConf.load(run_dir / HYDRA_DIR / "config.yaml"), resolve=False)
    choices = OmegaConf.load(run_dir / HYDRA_DIR / "hydra.yaml").hydra.runtime.choices
    # Only conf/train.yaml's groups: not Hydra's, not the preset, not the group of a rerun's own file.
    groups = set(conf_files.primary_choices()) - {SWEEP_PRESET_GROUP}
    chosen = {group: option for group, option in choices.items() if group in groups and option is not None}
    with initialize_config_dir(config_dir=str(conf_files.CONF)):
        base = compose(conf_files.PRIMARY, overrides=[f"{group}={name}" for group, name in chosen.items()])
    values = differing(saved, OmegaConf.to_container(base, resolve=False), set(leave_out))
    overrides = [{f"override /{group}": option} for group, option in chosen.items()]
    return {"defaults": [*overrides, "_self_"], **values}


def given_overrides(task_overrides: Iterable[str], config_dirs: Iterable[Path]) -> list[str]:
    """A job's task overrides with `+confirm=X` (a rerun's config file in one of config_dirs, the
    directories given with --config-dir) replaced by the overrides that file stands for: its group options
    and values (`scheduler=onecycle`, `scheduler.max_lr=0.003`), so that a rerun records, names itself in
    TensorBoard and is named in compare by what it trains, as the sweep's run was."""
    given = []
    for override in task_overrides:
        key, _, option = override.lstrip("+").partition("=")
        files = [d / key / f"{option}.yaml" for d in config_dirs] if key == RERUN_GROUP else []
        if found := [path for path in files if path.is_file()]:
            given += config_overrides(conf_files.read(found[0]))
        else:
            given.append(override)
    return given


def config_overrides(config: dict[str, Any]) -> list[str]:
    """What a rerun config (rerun_config) sets, as overrides: its groups' options where they are not
    conf/train.yaml's, and its values, without Hydra's own settings."""
    defaults = conf_files.primary_choices()
    chosen = {
        key.removeprefix("override /"): option
        for entry in config.get("defaults", [])
        if isinstance(entry, dict)
        for key, option in entry.items()
    }
    groups = [f"{group}={option}" for group, option in chosen.items() if defaults.get(group) != option]
    values = {key: value for key, value in config.items() if key not in ("defaults", "hydra")}
    return groups + [f"{key}={override_value(value)}" for key, value in leaves(values).items()]


def write_rerun_config(path: Path, config: dict[str, Any]) -> None:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, f"{conf_files.GLOBAL_PACKAGE}\n{body}")


def differing(saved: dict[str, Any], base: dict[str, Any], left_out: set[str], prefix: str = "") -> dict:
    """The values of `saved` that `base` lacks or holds otherwise, nested as in `saved`, without the dotted
    keys of left_out; lists are values (a config file sets a list as a whole)."""
    found: dict[str, Any] = {}
    for key, value in saved.items():
        dotted = f"{prefix}{key}"
        if dotted in left_out:
            continue
        if isinstance(value, dict) and value:
            inner = base.get(key) if isinstance(base.get(key), dict) else {}
            if nested := differing(value, inner, left_out, f"{dotted}."):
                found[key] = nested
        elif key not in base or base[key] != value:
            found[key] = value
    return found


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
    and the backslashes before it escaped; a path may hold a comma, which would make a sweep), numbers,
    booleans and null bare, lists and dicts nested."""
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
