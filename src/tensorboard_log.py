"""TensorBoard event files in the run directory: per-epoch scalars and the run's hyperparameters."""

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from src.loop import EpochRecord

SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/val": "val_acc",
    "accuracy/test": "test_acc",
    "lr": "lr",
    "time/epoch_s": "epoch_time_s",
}


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def log_epoch(self, record: EpochRecord) -> None:
        for tag, field in SCALARS.items():
            self.writer.add_scalar(tag, getattr(record, field), record.epoch)
        self.writer.flush()

    def close(self, hparams: dict[str, float | int | str | bool], final: dict[str, float]) -> None:
        """Record the hyperparameters with the final metrics (TensorBoard's HParams tab), then close."""
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        self.writer.close()
