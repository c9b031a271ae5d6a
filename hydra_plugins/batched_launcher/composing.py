"""Each job's config, as Hydra's load_sweep_config composes it, at a fraction of its cost for a sweep.

Composing a job's config from the defaults list takes Hydra about 0.3 s; the jobs of a sweep's batches of
trials usually differ only in values (`scheduler.gamma=0.31` against `scheduler.gamma=0.07`). A job whose
overrides are those of the last job Hydra composed for the sweep but for the values of plain keys (no config
group, no deletion, no dict or list value) gets that job's config with its own values applied as Hydra
applies a command-line override, and its own overrides recorded in hydra.overrides; any other job is
composed by Hydra. So Hydra composes one job of an Optuna sweep, not one per batch.
tests/test_batched.py checks that both ways give the same config.
"""

import pickle
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def apply_value_override(config: DictConfig, override: Override, value: object) -> None:
    """Set `value` (the override's, or one of a sweep override's) at its key, as Hydra applies a value
    override to a composed config (ConfigLoaderImpl._apply_overrides_to_config): merged, and added to a
    struct config for `+key=` and `++key=`."""
    force_add = override.is_add() or override.is_force_add()
    OmegaConf.update(config, override.key_or_group, value, merge=True, force_add=force_add)


class JobComposer:
    def __init__(self, config_loader: object, master_config: DictConfig) -> None:
        self.config_loader = config_loader
        self.master_config = master_config
        self.parser = OverridesParser.create()
        # The last job Hydra composed: its overrides, and its config pickled (each job derived from it is
        # that config unpickled: a copy, in half the time of pickling it each time)
        self.reference: tuple[list[Override], bytes] | None = None
        self.parsed_lines: dict[str, Override] = {}
        self.groups: dict[str, bool] = {}
        self.derived = 0  # jobs whose config was derived rather than composed (for the log and tests)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = [self._parsed(line) for line in overrides]
        if self.reference is not None:
            changes = self._value_changes(self.reference[0], parsed)
            if changes is not None:
                self.derived += 1
                return self._derive(self.reference[1], parsed, changes)
        config = self.config_loader.load_sweep_config(self.master_config, list(overrides))
        self.reference = (parsed, pickle.dumps(config))
        return config

    def _parsed(self, line: str) -> Override:
        """The override, parsed once for the sweep: most lines are the same in every job of it."""
        if line not in self.parsed_lines:
            self.parsed_lines[line] = self.parser.parse_overrides([line])[0]
        return self.parsed_lines[line]

    def _value_changes(self, reference: list[Override], parsed: list[Override]) -> list[Override] | None:
        """The overrides whose values differ from the reference job's, when only plain values differ."""
        if len(reference) != len(parsed):
            return None
        changes = []
        for before, now in zip(reference, parsed, strict=True):
            if before.input_line == now.input_line:
                continue
            if (
                before.key_or_group != now.key_or_group
                or before.type != now.type
                or before.package is not None
                or now.package is not None
                or now.is_delete()
                or now.is_list_extend()
                or now.is_sweep_override()
                or self._is_group(now.key_or_group)
                or isinstance(now.value(), dict | list)
                or isinstance(before.value(), dict | list)
            ):
                return None
            changes.append(now)
        return changes

    def _is_group(self, key: str) -> bool:
        if key not in self.groups:
            repository = getattr(self.config_loader, "repository", None)
            self.groups[key] = repository is None or repository.group_exists(key.replace(".", "/"))
        return self.groups[key]

    @staticmethod
    def _derive(reference: bytes, parsed: list[Override], changes: list[Override]) -> DictConfig:
        config = pickle.loads(reference)
        for override in changes:
            apply_value_override(config, override, override.value())
        hydra_lines = [o.input_line for o in parsed if o.is_hydra_override()]
        task_lines = [o.input_line for o in parsed if not o.is_hydra_override()]
        with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):
            master_hydra = list(config.hydra.overrides.hydra)[
                : len(config.hydra.overrides.hydra) - len(hydra_lines)
            ]
            config.hydra.overrides.hydra = [*master_hydra, *hydra_lines]
            config.hydra.overrides.task = task_lines
        return config
