"""The run directory as a file format: the one place that names its files, the values of `status`, the
columns of metrics.csv (EpochRecord, Column), the keys of metrics.json (Summary) and how a config's
`_target_` is shown (class_name).

Torch-free, so that readers (compare, the config callback) import it without the training stack.
The writer is src/run_files.py (with src/run.py); the readers are src/runs.py and what builds on it.
"""

from dataclasses import asdict, dataclass, fields

METRICS_CSV = "metrics.csv"  # one row per finished epoch
METRICS_JSON = "metrics.json"  # the run's outcome
LR_STEPS = "lr_steps.csv"  # a per-step schedule's lr at every optimizer step (step,lr; steps from 1)
WEIGHTS = "model.pt"  # the final weights (state_dict)
HYDRA_DIR = ".hydra"  # Hydra's composed config and overrides
SWEEP_CONFIG = "multirun.yaml"  # what Hydra writes into a sweep directory as the sweep starts

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


class Column:
    """The metrics.csv columns readers pick by name (each one an EpochRecord field)."""

    EPOCH = "epoch"
    LR = "lr"
    VAL_LOSS = "val_loss"
    VAL_ACC = "val_acc"


COLUMNS = tuple(f.name for f in fields(EpochRecord))


class Summary:
    """The keys of metrics.json, the run's outcome: written by src/run.py, read by src/runs.py and what
    builds on it (compare, confirm, the seed statistics) and, through TRIAL_ATTRS, the sweep summary."""

    STATUS = "status"
    REASON = "reason"  # why it failed, was pruned or stopped (None when completed)
    VAL_ACC = "val_acc"  # the last epoch's
    BEST_VAL_ACC = "best_val_acc"
    BEST_EPOCH = "best_epoch"  # the epoch of best_val_acc
    TEST_ACC = "test_acc"  # the last epoch's
    EPOCHS_COMPLETED = "epochs_completed"
    EPOCHS_PLANNED = "epochs_planned"
    EPOCHS_REUSED = "epochs_reused"  # taken from an earlier run's shared epochs instead of trained
    REUSED_FROM = "reused_from"  # that run's directory
    WALL_TIME_S = "wall_time_s"
    DATA_SOURCE = "data_source"
    N_TRAIN = "n_train"
    N_VAL = "n_val"
    N_TEST = "n_test"
    SEED = "seed"
    DEVICE = "device"
    OVERRIDES = "overrides"  # the job's command-line overrides
    HYPERPARAMETERS = "hyperparameters"
    STEPS = "steps"  # the run's config's steps.*, as filled in from its data (what ${steps.total} stands for)
    WEIGHTS_ERROR = "weights_error"  # only when model.pt could not be written


# The results of a run's epochs (None while no epoch has finished) and the sizes of its data splits.
EPOCH_RESULTS = (Summary.VAL_ACC, Summary.BEST_VAL_ACC, Summary.BEST_EPOCH, Summary.TEST_ACC)
DATA_SIZES = (Summary.N_TRAIN, Summary.N_VAL, Summary.N_TEST)
# The values readers sort, filter and average: numbers or None (anything else is left out with a warning).
NUMERIC_SUMMARY = (
    *EPOCH_RESULTS,
    Summary.EPOCHS_COMPLETED,
    Summary.EPOCHS_PLANNED,
    Summary.EPOCHS_REUSED,
    Summary.WALL_TIME_S,
    *DATA_SIZES,
)
# What a run may return to the sweeper (optimized_metric).
OPTIMIZED_METRICS = (Summary.VAL_ACC, Summary.BEST_VAL_ACC)
# The summary keys a run also records on its Optuna trial, read by the sweep summary
# (src/sweep_summary.py) and compare --study.
TRIAL_ATTRS = (
    Summary.STATUS,
    Summary.TEST_ACC,
    Summary.EPOCHS_COMPLETED,
    Summary.EPOCHS_PLANNED,
    Summary.EPOCHS_REUSED,
)


def class_name(target: str) -> str:
    """How a `_target_` is shown in summaries, tables and TensorBoard: its class name."""
    return str(target).rsplit(".", 1)[-1]
