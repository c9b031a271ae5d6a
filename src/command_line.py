"""Checks of the command line itself, before Hydra composes anything.

Hydra answers an unknown config group option (`model=resnet`, `hydra/sweeper/sampler=tpee`) with a dozen
lines (the options, then its config search path), two of its commands at once (`--multirun --cfg job`) with
a traceback, and instantiates hydra.callbacks before any callback of ours could check them. These are
checked here, on the words as typed, so they fail in one line like every other bad value.
"""

import difflib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra

from src import conf_files
from src.errors import ConfigError, UserInputError

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


def check_group_option(key: str, value: str) -> None:
    """`group=option` for one of this app's config groups (conf/<group>/) names an existing option; so does
    each option of a sweep over the group (`scheduler=step_lr,onecycle`, `scheduler=choice(step_lr,cosine)`).
    Other sweep functions are left to Hydra."""
    if conf_files.is_group(key):
        check_option(key, value, conf_files.group_options(key), f" (conf/{key}/)")


def named_options(key: str, value: str) -> list[str]:
    """The options a value names: one, a sweep's `a,b`, or a `choice(a,b)` (which a search draws from: an
    option that is not one used to open the study and fail its trials); none for other sweep functions."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    if "(" not in value:
        return [option.strip() for option in value.split(",")]
    sweep = OverridesParser.create().parse_overrides([f"{key}={value}"])[0].value()
    return [str(option) for option in sweep.list] if isinstance(sweep, ChoiceSweep) else []


def check_option(key: str, value: str, options: list[str], where: str = "") -> None:
    """Each option of `value` (one, or a sweep's) is one of `options` (Hydra refuses `model=null` and
    `model=` with a traceback or a dozen lines)."""
    for option in named_options(key, value):
        if option not in options:  # in a sweep, the option that is not one
            raise ConfigError(key, option, f"one of {', '.join(options)}{where}")


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
    registered = {
        name.removesuffix(".yaml")
        for name, entry in node.items()
        if not isinstance(entry, dict) and removed_reason(entry.node) is None
    }
    shipped = Path(hydra.__file__).parent / "conf" / group
    files = {path.stem for path in shipped.glob("*.yaml")} | set(conf_files.group_options(group))
    return sorted(registered | files)


def removed_reason(node: Any) -> str | None:
    """Why a registered option is gone, for one a plugin keeps only to say so: hydra-optuna-sweeper's
    hydra/sweeper/sampler=motpe builds `raise_motpe_removed`, which raises (after the sweep has started,
    with a traceback) that Optuna 4 removed the sampler."""
    from hydra.utils import get_object

    target = node.get("_target_") if hasattr(node, "get") else None
    if not isinstance(target, str) or not target.startswith("hydra_plugins."):
        return None
    if not target.rpartition(".")[2].startswith("raise_"):
        return None
    try:
        get_object(target)()
    except Exception as error:
        return str(error)
    return None


def check_hydra_group_option(group: str, value: str) -> None:
    """`hydra/<group>=option` names an option the group has (Hydra's own answer lists them over a dozen
    lines, with its config search path), and not one kept only to say it was removed; sweeps and groups
    unknown here are left to Hydra."""
    from hydra.core.config_store import ConfigStore

    if "," in value:  # a sweep over Hydra's own config, which Hydra refuses in its own words
        return
    if options := hydra_group_options(group):
        try:
            node = ConfigStore.instance().load(f"{group}/{value.strip()}.yaml").node
        except Exception:  # not registered: a file, or no such option
            node = None
        if node is not None and (reason := removed_reason(node)):
            raise UserInputError(f"{group}={value} is not allowed: {reason}")
        check_option(group, value, options)


# Groups whose options are a class's arguments: a key they lack may be added with `+`.
CLASS_GROUPS = ("model", "optimizer", "scheduler")


def chosen_options(arguments: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The options of each of conf/'s groups a run or sweep of this command line may compose: the default of
    conf/train.yaml, or what the command line chooses (every option for glob)."""
    chosen = {
        group: () if option is None else (option,) for group, option in conf_files.primary_choices().items()
    }
    for argument in arguments:
        key, _, value = argument.lstrip("+~").partition("=")
        if not conf_files.is_group(key):
            continue
        value = value.strip().strip("'\"")
        if argument.startswith("~"):
            chosen[key] = ()
        else:  # the options named; any of them for a sweep function other than choice (glob)
            chosen[key] = tuple(named_options(key, value)) or tuple(conf_files.group_options(key))
    return chosen


@functools.cache
def config_keys(chosen: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
    """Every key a composed config of these group options can have, as a tree: conf/train.yaml's own, and
    those of each option (under the group's name, or at the top for a `# @package _global_` preset)."""
    tree = conf_files.without_composition(conf_files.primary())
    for group, options in chosen:
        for option in options:
            is_global = conf_files.is_global(group, option)
            for body in conf_files.option_bodies(group, option):
                keys = conf_files.without_composition(body)
                merge_keys(tree, keys if is_global else {group: keys})
    return tree


def merge_keys(tree: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            merge_keys(tree[key], value)
        elif isinstance(value, dict) or key not in tree:
            tree[key] = value


def missing_part(key: str, chosen: dict[str, tuple[str, ...]]) -> tuple[int, list[str]] | None:
    """Where `scheduler.step_size` leaves the keys a composed config of these options can have: the index
    of its first part that is not there and the keys there are beside it; None when the key is there, or
    its path goes into a list or a value (left to Hydra)."""
    node: Any = config_keys(tuple((group, options) for group, options in chosen.items()))
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or ".".join(parts[depth:]) in node:
            return None
        if part not in node:
            return depth, sorted(map(str, node))
        node = node[part]
    return None


def owner_of(parts: list[str], chosen: dict[str, tuple[str, ...]]) -> str:
    """What a missing key would be part of: `scheduler=cosine` for a group's option, else the node."""
    parent = ".".join(parts)
    return f"{parent}={','.join(chosen[parent])}" if chosen.get(parent) else parent or "the config"


def check_setting_exists(key: str, chosen: dict[str, tuple[str, ...]], argument: str) -> None:
    """`trainer.epoch=3` names a key the composed config will have. Hydra answers a typo in five lines, and
    suggests adding the key with `+`, which for trainer's settings we refuse and for a class's arguments
    moves the failure to the class."""
    if (missing := missing_part(key, chosen)) is None:
        return
    depth, keys = missing
    parts = key.split(".")
    if close := difflib.get_close_matches(parts[depth], keys, n=1):
        hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}?"
    else:
        hint = f"it has {', '.join(keys)}"
        if parts[0] in CLASS_GROUPS:
            hint += f"; +{key}=... passes a new argument"
    owner = owner_of(parts[:depth], chosen)
    raise UserInputError(f"{argument} is not allowed: {owner} has no key {parts[depth]} ({hint})")


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


def given(arguments: Sequence[str], command: str) -> bool:
    flags = COMMANDS[command]
    return any(a in flags or a.startswith(tuple(f"{flag}=" for flag in flags)) for a in arguments)


def check_one_command(arguments: Sequence[str]) -> None:
    commands = [command for command in COMMANDS if given(arguments, command)]
    if len(commands) > 1:
        allowed = ", ".join(COMMANDS)
        raise UserInputError(f"{' and '.join(commands)} cannot be combined: give one of {allowed}")


def check_sweeps_have_multirun(arguments: Sequence[str], overrides: dict[str, Any]) -> None:
    """Without --multirun, an override with several values (`scheduler.gamma=0.1,0.5`, `choice(...)`) gets
    Hydra's four lines on what it could mean: one line here, parsed as Hydra parses it."""
    if given(arguments, "--multirun"):
        return
    for argument, override in overrides.items():
        if override.is_sweep_override():
            raise UserInputError(
                f"{argument} is not allowed without --multirun: several values are a sweep (add --multirun; "
                "[a,b] is a list, quoted 'a,b' is text)"
            )


def parsed_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """Each override as Hydra's parser reads it, once for every check; one that does not read in Hydra's
    grammar (`scheduler.gamma=intervl(0.1,0.5)`, `interval(0.1`) is refused with the one line of Hydra's
    five that says what is wrong."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from hydra_plugins.optuna_pruning_sweeper.grammar import override_error_reason

    parser = OverridesParser.create()
    overrides = {}
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue
        try:
            overrides[argument] = parser.parse_overrides([argument])[0]
        except OverrideParseException as error:
            raise UserInputError(f"{argument} is not allowed: {override_error_reason(error)}") from None
    return overrides


SEARCH_SPACE = "hydra.sweeper.params."


def search_space_keys(chosen: dict[str, tuple[str, ...]]) -> dict[str, Any] | None:
    """hydra.sweeper.params as conf/train.yaml and the chosen sweep presets set it (nested, or upstream's
    flat dotted keys); None where none sets it (no key can then be added to it on the command line)."""
    bodies = [conf_files.primary()]
    for preset in chosen.get("hparams_search", ()):
        bodies += conf_files.option_bodies("hparams_search", preset)
    tree = None
    for body in bodies:
        params = ((body.get("hydra") or {}).get("sweeper") or {}).get("params")
        if isinstance(params, dict):
            tree = tree or {}
            merge_keys(tree, params)
    return tree


def has_path(tree: dict[str, Any], key: str) -> bool:
    parts = key.split(".")
    for depth in range(len(parts)):
        if ".".join(parts[depth:]) in tree:
            return True
        if not isinstance(tree.get(parts[depth]), dict):
            return False
        tree = tree[parts[depth]]
    return False


def check_search_space_setting(argument: str, override: Any, chosen: dict[str, tuple[str, ...]]) -> None:
    """`hydra.sweeper.params.KEY=RANGE` searches a setting the runs have (a typo would fail every trial),
    one the preset's search space has unless added with `+` (Hydra refuses the others in five lines), and
    its range is quoted (Hydra refuses a sweep over its own config with a line that does not say so)."""
    key, _, value = argument.lstrip("+").partition("=")
    searched = key.removeprefix(SEARCH_SPACE)
    check_setting_exists(searched, chosen, argument)
    if override.is_sweep_override():
        raise UserInputError(
            f"{argument} is not allowed: quote the range for Hydra ({key}='{value}'), or give it directly "
            f"({searched}={value})"
        )
    space = search_space_keys(chosen)
    presets = ",".join(chosen.get("hparams_search", ())) or "none"
    if space is None:
        raise UserInputError(
            f"{argument} is not allowed: hparams_search={presets} has no search space (hydra.sweeper.params) "
            f"to change; give {searched}=RANGE directly"
        )
    if not argument.startswith("+") and not has_path(space, searched):
        raise UserInputError(
            f"{argument} is not allowed: the search space of hparams_search={presets} has no {searched} "
            f"(search it with +{argument}, or give {searched}=RANGE directly)"
        )


def leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a tree's values: {scheduler: {gamma: ...}} gives scheduler.gamma."""
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys += leaf_keys(value, f"{path}.") if isinstance(value, dict) else [path]
    return keys


def presets_searching(group: str) -> list[str]:
    """The hparams_search presets whose search space chooses among a group's options."""
    presets = conf_files.group_options("hparams_search")
    return [p for p in presets if group in leaf_keys(search_space_keys({"hparams_search": (p,)}) or {})]


def check_searched_keys_exist(arguments: Sequence[str], chosen: dict[str, tuple[str, ...]]) -> None:
    """Each key a sweep's preset searches (less those `~hydra.sweeper.params.KEY` drops) is one its runs
    have. `scheduler=cosine` under hparams_search=steplr_optuna, which searches StepLR's step_size, used to
    open the study, fail its first trials with Hydra's five lines and queue them again, and exit 1."""
    if not given(arguments, "--multirun") or not (space := search_space_keys(chosen)):
        return
    deleted = [a[1:].partition("=")[0] for a in arguments if a.startswith("~")]
    dropped = [key.removeprefix(SEARCH_SPACE) for key in deleted if key.startswith(SEARCH_SPACE)]
    for key in leaf_keys(space):
        if conf_files.is_group(key) or any(key == d or key.startswith(f"{d}.") for d in dropped):
            continue  # a group's options (`scheduler: choice(...)`) are left to Hydra
        parts = key.split(".")
        options = chosen.get(parts[0], ())
        # each option the search draws (`scheduler=choice(step_lr,cosine)`) composes a run that must have it
        each = [{**chosen, parts[0]: (option,)} for option in options] or [chosen]
        misses = [(missing, one) for one in each if (missing := missing_part(key, one)) is not None]
        if not misses:
            continue
        missing, one = misses[0]
        owner = owner_of(parts[: missing[0]], one)
        searching = presets_searching(parts[0])
        across = f"; hparams_search={searching[0]} searches across them" if searching else ""
        presets = ",".join(chosen["hparams_search"])
        raise UserInputError(
            f"hparams_search={presets} searches {key}, which {owner} does not have "
            f"(drop it from the search with ~{SEARCH_SPACE}{key}, or choose a {parts[0]} that has it{across})"
        )


# Hydra's plugin groups whose settings (hydra.sweeper.n_trials) are checked by name and type.
PLUGIN_GROUPS = ("sweeper", "launcher")


def chosen_plugin(
    arguments: Sequence[str], chosen: dict[str, tuple[str, ...]], group: str, parent: Any = None
) -> str:
    """The hydra/<group> option the command line chooses, else the one the hparams_search preset chooses,
    else the default: the parent option's for a nested group (hydra/sweeper/pruner), else Hydra's (basic)."""
    for argument in reversed(arguments):
        key, _, value = argument.lstrip("+").partition("=")
        if key == f"hydra/{group}":
            return value.strip().strip("'\"")
    for preset in chosen.get("hparams_search", ()):
        # The preset's own choice first, then that of the preset it extends.
        for body in reversed(conf_files.option_bodies("hparams_search", preset)):
            for entry in body.get("defaults", []):
                if isinstance(entry, dict) and f"override /hydra/{group}" in entry:
                    return str(entry[f"override /hydra/{group}"])
    if parent is None:
        return "basic"
    name = group.rpartition("/")[2]
    defaults = [entry for entry in parent.get("defaults") or [] if isinstance(entry, Mapping)]
    return next((str(entry[name]) for entry in defaults if name in entry), "")


def plugin_settings(group: str, option: str) -> Any:
    """The structured config of a hydra/<group> option (a conf/hydra/<group>/ file: that of the option it
    extends), or None when there is none to check against."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()
    path = conf_files.option_path(f"hydra/{group}", option)
    if path.is_file():
        extended = conf_files.extended_options(conf_files.read(path))
        option = extended[0] if len(extended) == 1 else ""
    try:
        return ConfigStore.instance().load(f"hydra/{group}/{option}.yaml").node
    except Exception:
        return None


def check_plugin_setting(
    argument: str,
    override: Any,
    arguments: Sequence[str],
    chosen: dict[str, tuple[str, ...]],
    group: str,
    parent: Any = None,
) -> None:
    """`hydra.sweeper.n_trials=abc`, `hydra.sweeper.n_trial=5` or `hydra.sweeper.pruner.n_startup=2`: the
    chosen option's settings (for a nested group such as hydra/sweeper/pruner, its chosen option's) have
    that name and take that type (OmegaConf's check, as Hydra's, in one line instead of five)."""
    import copy

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    option = chosen_plugin(arguments, chosen, group, parent)
    settings = plugin_settings(group, option)
    if settings is None:
        return
    parts = override.key_or_group.split(".")
    depth = group.count("/") + 2  # hydra.sweeper.NAME, hydra.sweeper.pruner.NAME
    name = parts[depth]
    keys = sorted(str(key) for key in settings if key not in ("_target_", "defaults"))  # with ??? ones
    if name not in keys:
        close = difflib.get_close_matches(name, keys, n=1)
        where = ".".join(parts[:depth])
        hint = f"did you mean {where}.{close[0]}?" if close else f"it has {', '.join(keys) or 'none'}"
        raise UserInputError(
            f"{argument} is not allowed: hydra/{group}={option} has no setting {name} ({hint})"
        )
    if len(parts) > depth + 1:  # a nested group's setting is its chosen option's; other nested ones are left
        if hydra_group_options(f"hydra/{group}/{name}"):
            check_plugin_setting(argument, override, arguments, chosen, f"{group}/{name}", settings)
        return
    if override.is_sweep_override():
        return  # Hydra refuses a sweep over its own config in its own words
    try:
        OmegaConf.update(copy.deepcopy(settings), name, override.value(), merge=True)
    except OmegaConfBaseException as error:
        raise UserInputError(f"{argument} is not allowed: {str(error).splitlines()[0]}") from None


# Hydra's flags that choose another primary config, or add a config directory.
CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def check_command_line(arguments: Sequence[str]) -> None:
    """Raise UserInputError for the first thing on the command line that Hydra would report in many
    lines, or too late."""
    check_one_command(arguments)
    overrides = parsed_overrides(arguments)
    check_sweeps_have_multirun(arguments, overrides)
    if any(a.startswith(CONFIG_FLAGS) for a in arguments):
        return  # another primary config or config directory: its keys are not conf/train.yaml's
    chosen = chosen_options(arguments)
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
        plain = not argument.startswith(("+", "~")) and "/" not in key
        parts = key.split(".")
        if plain and parts[0] != "hydra" and key not in chosen:
            check_setting_exists(key, chosen, argument)
        elif key.startswith(SEARCH_SPACE) and not argument.startswith("~"):
            check_search_space_setting(argument, overrides[argument], chosen)
        elif plain and len(parts) > 2 and parts[0] == "hydra" and parts[1] in PLUGIN_GROUPS:
            check_plugin_setting(argument, overrides[argument], arguments, chosen, parts[1])
    check_searched_keys_exist(arguments, chosen)
