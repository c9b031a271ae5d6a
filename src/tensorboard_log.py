"""TensorBoard event files in the run directory: per-epoch scalars, and the run as a session of the HParams
dashboard.

torch's SummaryWriter.add_hparams writes an experiment summary into every run. TensorBoard reads the first one
it finds as the experiment of the whole logdir, so every hyperparameter showed as not differing between runs
and the dashboard ticked the constant ones. Here each run writes only its session: its hyperparameters and a
readable name when it starts, its status when it ends. TensorBoard then builds the experiment from all runs:
the hyperparameters that differ (the swept ones) come first, and the metrics are the runs' scalars (the last
value of each: the final epoch's).
"""

import time
from pathlib import Path

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from src.run_record import STATUS_COMPLETED, STATUS_PRUNED, EpochRecord

SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/val": "val_acc",
    "accuracy/test": "test_acc",
    "lr": "lr",
    "time/epoch_s": "epoch_time_s",
}
STEP_POINTS_PER_EPOCH = 50
# A pruned run stopped early by design: neither a success nor a failure (TensorBoard has no "pruned").
SESSION_STATUS = {STATUS_COMPLETED: api_pb2.STATUS_SUCCESS, STATUS_PRUNED: api_pb2.STATUS_UNKNOWN}


def session_name(job: str, overrides: list[str]) -> str:
    """The run as TensorBoard's "Trial ID" shows it: its job and what was set for it, with short keys
    (`3: step_size=3 gamma=0.4123`)."""
    settings = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if "." in value or "e" in value.lower():
            value = shortened_number(value)
        settings.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return f"{job}: {' '.join(settings) or 'defaults'}"


def shortened_number(text: str) -> str:
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


def hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """An HParams plugin summary, as tensorboard.plugins.hparams.summary writes it (without TensorFlow)."""
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def session_start(hparams: dict[str, float | int | str | bool], name: str) -> Summary:
    info = plugin_data_pb2.SessionStartInfo(group_name=name, start_time_secs=time.time())
    for key, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, int | float):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)
    return hparams_summary(
        metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info)
    )


def session_end(status: str) -> Summary:
    info = plugin_data_pb2.SessionEndInfo(
        status=SESSION_STATUS.get(status, api_pb2.STATUS_FAILURE), end_time_secs=time.time()
    )
    return hparams_summary(
        metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info)
    )


class TensorBoardLog:
    def __init__(self, run_dir: Path, hparams: dict[str, float | int | str | bool], name: str) -> None:
        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.writer.file_writer.add_summary(session_start(hparams, name))

    def log_epoch(self, record: EpochRecord) -> None:
        for tag, field in SCALARS.items():
            self.writer.add_scalar(tag, getattr(record, field), record.epoch)
        self.writer.flush()

    def log_steps(self, steps_before: int, lrs: list[float]) -> None:
        """A per-step schedule's lr over an epoch's optimizer steps (counted from 1 over the run): at most
        STEP_POINTS_PER_EPOCH evenly spaced steps and the epoch's last one. Each scalar costs about 90 us in
        SummaryWriter: at every step they would slow the default model's epoch by half; lr_steps.csv has
        every step."""
        stride = max(1, -(-len(lrs) // STEP_POINTS_PER_EPOCH))
        for index in sorted({*range(0, len(lrs), stride), len(lrs) - 1}):
            self.writer.add_scalar("lr/step", lrs[index], steps_before + index + 1)
        self.writer.flush()

    def close(self, status: str) -> None:
        """End the session with the run's status (failed or interrupted: a failure), then close."""
        self.writer.file_writer.add_summary(session_end(status))
        self.writer.close()
