"""The run directory as a file format: the one place that names its files, the values of `status`, the
columns of metrics.csv (EpochRecord) and how a config's `_target_` is shown (class_name).

Torch-free, so that readers (compare, the config callback) import it without the training stack.
The writer is src/run_files.py (with src/run.py); the readers are src/runs.py and what builds on it.
"""

from dataclasses import asdict, dataclass

METRICS_CSV = "metrics.csv"  # one row per finished epoch
METRICS_JSON = "metrics.json"  # the run's outcome
LR_STEPS = "lr_steps.csv"  # a per-step schedule's lr at every optimizer step (step,lr; steps from 1)
WEIGHTS = "model.pt"  # the final weights (state_dict)
HYDRA_DIR = ".hydra"  # Hydra's composed config and overrides

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_PRUNED = "pruned"
STATUS_INTERRUPTED = "interrupted"  # stopped from outside (Ctrl-C): its last epoch is not the planned one
STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_PRUNED, STATUS_INTERRUPTED)


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: one row of metrics.csv. `lr` is the rate of the epoch's first optimizer step,
    `lr_last` of its last one: equal for a scheduler that steps once per epoch (the rate of the whole
    epoch), the ends of the epoch's curve for one that steps per batch."""

    epoch: int  # counted from 1, as the seed prints it
    lr: float
    train_loss: float
    val_loss: float
    val_acc: float  # percent
    test_acc: float  # percent
    train_time_s: float
    epoch_time_s: float  # training and evaluation
    lr_last: float

    def as_row(self) -> dict[str, float]:
        return asdict(self)


def class_name(target: str) -> str:
    """How a `_target_` is shown in summaries, tables and TensorBoard: its class name."""
    return str(target).rsplit(".", 1)[-1]


# The summary keys (metrics.json) a run also records on its Optuna trial, read by the sweep summary
# (src/sweep_summary.py) and compare --study.
TRIAL_ATTRS = ("status", "test_acc", "epochs_completed", "epochs_planned", "epochs_reused")
