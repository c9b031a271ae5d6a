"""Runs of a sweep that share their first epochs train them once (trainer.prefix_cache).

Two runs with the same model, optimizer, data, batch sizes, seed, device and thread count that keep
the learning rate at lr0 for their first k epochs are in exactly the same state after those k
epochs, whatever their schedulers do later. A StepLR trial with step_size s shares its first s
epochs with every other trial of a step_size x gamma sweep, and every scheduler here shares the
first epoch. So each run stores its state after each of its constant-lr epochs under a key of
everything that state depends on; a run that finds the longest such state its own schedule allows
starts from it. Its metrics for those epochs are copied from the run that trained them (timings 0),
and metrics.json says how many epochs were reused and from where. Tests check that the results equal
those of a run from scratch.
"""

import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from src.atomic_files import write_atomically
from src.data import MnistSplits, raw_files_identity
from src.hardware import cpu_identity
from src.run_record import Column, EpochRecord
from src.schedules import Stepping, optimizer_settings

log = logging.getLogger(__name__)

# Bump when the loop changes what a state after k epochs is.
FORMAT_VERSION = 3


# Config keys that cannot change a run's state after its shared epochs (everything else is hashed, so a new
# option, say gradient clipping, separates runs without touching this file): the schedule (shared epochs are
# those it leaves as configured), the run's length, where and how it logs and is checked, and what the key
# adds in resolved form (data.root as its files, the device and thread count as used).
NOT_IN_THE_STATE = (
    "hydra",
    "scheduler",
    "steps",
    "trainer.epochs",
    "trainer.prefix_cache",
    "trainer.device",
    "trainer.num_threads",
    "trainer.stacking",
    "data.root",
    "data.download",
    "data.offline_fallback",
    "logger",
    "optimized_metric",
    "prune_from",
    "overwrite",
    "schedule_families",
)


def state_key(cfg: DictConfig, data: MnistSplits, device: torch.device) -> str:
    """A digest of everything the state after k epochs at the configured optimizer settings depends on: the
    whole resolved config but NOT_IN_THE_STATE, the data's identity, the device, CPU and thread count."""
    config = resolved_except(cfg, NOT_IN_THE_STATE)
    root = Path(to_absolute_path(cfg.data.root)).resolve()
    identity = {
        "format": FORMAT_VERSION,
        "torch": torch.__version__,
        "config": config,
        "data_root": str(root),
        "data_source": data.source,
        "data_sizes": data.sizes(),
        "data_files": raw_files_identity(root),
        "device": str(device),
        "cpu": cpu_identity(),
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def resolved_except(node: DictConfig, left_out: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """The config resolved, without the dotted keys left out (never resolved: Hydra's own node holds values
    that exist only in some processes)."""
    resolved: dict[str, Any] = {}
    for key in node:
        dotted = f"{prefix}{key}"
        if dotted in left_out:
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            resolved[key] = resolved_except(value, left_out, f"{dotted}.")
        elif isinstance(value, ListConfig):
            resolved[key] = OmegaConf.to_container(value, resolve=True)
        else:
            resolved[key] = value
    return resolved


def in_sweep_dir_of_a_single_run(directory: Path) -> bool:
    """A sweep preset's `${hydra:sweep.dir}/.prefix_cache` in a run without --multirun: no run would share
    it, and it made an empty multirun/DATE/TIME/ for the run's states."""
    if not HydraConfig.initialized() or (hydra := HydraConfig.get()).mode != RunMode.RUN:
        return False
    return directory.is_relative_to(Path(to_absolute_path(str(hydra.sweep.dir))))


class SharedPrefix:
    """The stored states of one key: `<directory>/<key>-<epochs>.pt`."""

    def __init__(
        self, directory: Path, key: str, constant_epochs: int, run_dir: Path, steps_per_epoch: int
    ) -> None:
        self.directory = directory
        self.key = key
        self.constant_epochs = constant_epochs  # this run's epochs at lr0: the states it may store or reuse
        self.run_dir = run_dir
        self.steps_per_epoch = steps_per_epoch
        self.reused_epochs = 0
        self.reused_from: str | None = None

    @classmethod
    def for_run(
        cls, cfg: DictConfig, data: MnistSplits, device: torch.device, run_dir: Path, constant_epochs: int
    ) -> "SharedPrefix | None":
        if device.type != "cpu":  # CUDA kernels and RNG streams are not restored bit for bit here
            log.info("trainer.prefix_cache is used on the CPU only: training every epoch on %s", device)
            return None
        directory = Path(to_absolute_path(cfg.trainer.prefix_cache))
        if in_sweep_dir_of_a_single_run(directory):
            log.info("trainer.prefix_cache is in hydra.sweep.dir: a single run has no sweep to share it with")
            return None
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, state_key(cfg, data, device), constant_epochs, run_dir, cfg.steps.per_epoch)

    def path(self, epochs: int) -> Path:
        return self.directory / f"{self.key}-{epochs:04d}.pt"

    def load(self, epochs: int) -> dict[str, Any] | None:
        path = self.path(epochs)
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as error:  # a damaged file: the epochs are trained again and stored anew
            log.warning("prefix state %s unreadable (%s): training those epochs instead", path, error)
            path.unlink(missing_ok=True)
            return None

    def save(
        self,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        records: list[EpochRecord],
    ) -> None:
        """Store the state after `epoch` when this run trained it at lr0 and nobody stored it yet."""
        if not self.reused_epochs < epoch <= self.constant_epochs or self.path(epoch).exists():
            return
        state = {
            "epochs": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "rng": torch.get_rng_state(),
            "records": [asdict(record) for record in records],
            "run_dir": str(self.run_dir),
        }
        try:
            write_atomically(self.path(epoch), lambda f: torch.save(state, f))
        except OSError as error:  # a full or read-only cache costs later runs these epochs, not this run
            log.warning(
                "prefix state %s not stored (%s): later runs train these epochs", self.path(epoch), error
            )

    def resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        stepping: Stepping,
        generator: torch.Generator,
        on_epoch_end: Callable[[EpochRecord], None],
    ) -> int:
        """Start from the longest stored state this run's schedule allows, replaying its epochs through
        `on_epoch_end`; the number of epochs reused (0: train from scratch)."""
        state = next(filter(None, map(self.load, range(self.constant_epochs, 0, -1))), None)
        if state is None:
            return 0
        epochs = state["epochs"]
        with warnings.catch_warnings():  # the scheduler catches up with the restored epochs
            warnings.simplefilter("ignore", UserWarning)
            stepping.catch_up(epochs, self.steps_per_epoch)
        settings = optimizer_settings(
            optimizer
        )  # this run's next lr (the stored optimizer has its own run's)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group, own in zip(optimizer.param_groups, settings, strict=True):
            group.update(own)
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        self.reused_epochs, self.reused_from = epochs, state["run_dir"]
        log.info(
            "reusing %d epochs at lr %g trained by %s",
            epochs,
            state["records"][0][Column.LR],
            self.reused_from,
        )
        for row in state["records"]:
            record = EpochRecord(**{**row, "train_time_s": 0.0, "epoch_time_s": 0.0})
            try:
                on_epoch_end(record)
            except BaseException:  # stopped (pruned) within the reused epochs: keep that epoch's weights
                if record.epoch < epochs and (earlier := self.load(record.epoch)):
                    model.load_state_dict(earlier["model"])
                raise
        return epochs


class StoreSharedEpochs:
    """The epoch callback of a run with trainer.prefix_cache: its state after each constant-lr epoch."""

    def __init__(
        self,
        shared: SharedPrefix,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        records: list[EpochRecord],
    ) -> None:
        self.shared, self.model, self.optimizer, self.generator, self.records = (
            shared,
            model,
            optimizer,
            generator,
            records,
        )

    def on_epoch_end(self, record: EpochRecord, step_lrs: list[float]) -> None:
        self.shared.save(record.epoch, self.model, self.optimizer, self.generator, self.records)

    def on_run_end(self, status: str) -> None:
        pass
