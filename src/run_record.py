"""The run directory as a file format: the one place that names its files and the values of `status`.

Torch-free, so that readers (compare, the config callback) import it without the training stack.
The writer is src/run_files.py (with src/run.py); the readers are src/runs.py and what builds on it.
"""

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
