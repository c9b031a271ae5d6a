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
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.atomic_files import write_atomically
from src.config import EXECUTION_WHITELIST
from src.data import MnistSplits, raw_files_identity
from src.hardware import cpu_identity
from src.loop import EpochRecord

log = logging.getLogger(__name__)

# Bump when the loop changes what a state after k epochs is.
FORMAT_VERSION = 1
# Schedulers that change nothing but the learning rate: with them, equal lrs mean equal states.
LR_ONLY_SCHEDULERS = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "ConstantLR",
    "LinearLR",
    "PolynomialLR",
)


def constant_lr_epochs(cfg: DictConfig) -> int:
    """How many epochs from the start the run's schedule keeps the learning rate at lr0."""
    if cfg.scheduler._target_.rsplit(".", 1)[-1] not in LR_ONLY_SCHEDULERS:
        return 0
    lr0 = cfg.optimizer.lr
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr0)
    scheduler = instantiate(cfg.scheduler, _execution_whitelist_=EXECUTION_WHITELIST)(probe)
    with warnings.catch_warnings():  # stepping a scheduler without optimizer steps warns
        warnings.simplefilter("ignore", UserWarning)
        for epoch in range(cfg.trainer.epochs):
            if probe.param_groups[0]["lr"] != lr0:
                return epoch
            scheduler.step()
    return cfg.trainer.epochs


def state_key(cfg: DictConfig, data: MnistSplits, device: torch.device) -> str:
    """A digest of everything the state after k epochs at lr0 depends on, k aside."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg["root"] = str(Path(to_absolute_path(cfg.data.root)).resolve())
    identity = {
        "format": FORMAT_VERSION,
        "torch": torch.__version__,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "data": data_cfg,
        "data_source": data.source,
        "data_sizes": data.sizes(),
        "data_files": raw_files_identity(Path(data_cfg["root"])),
        "trainer": {k: cfg.trainer[k] for k in ("batch_size", "eval_batch_size", "seed")},
        "device": str(device),
        "cpu": cpu_identity(),
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


class SharedPrefix:
    """The stored states of one key: `<directory>/<key>-<epochs>.pt`."""

    def __init__(self, directory: Path, key: str, constant_epochs: int, run_dir: Path) -> None:
        self.directory = directory
        self.key = key
        self.constant_epochs = constant_epochs  # this run's epochs at lr0: the states it may store or reuse
        self.run_dir = run_dir
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
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, state_key(cfg, data, device), constant_epochs, run_dir)

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
        scheduler: torch.optim.lr_scheduler.LRScheduler,
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
            for _ in range(epochs):
                scheduler.step()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr  # the stored optimizer carries its own run's next lr
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        self.reused_epochs, self.reused_from = epochs, state["run_dir"]
        log.info("reusing %d epochs at lr %g trained by %s", epochs, scheduler.base_lrs[0], self.reused_from)
        for row in state["records"]:
            record = EpochRecord(**{**row, "train_time_s": 0.0, "epoch_time_s": 0.0})
            try:
                on_epoch_end(record)
            except BaseException:  # stopped (pruned) within the reused epochs: keep that epoch's weights
                if record.epoch < epochs and (earlier := self.load(record.epoch)):
                    model.load_state_dict(earlier["model"])
                raise
        return epochs
