"""The same Optuna sweep (sampler seed 42) with and without the median pruner, on the full MNIST:
30 trials x 8 epochs. Reports the epochs each sweep trained, its wall time and its best
validation accuracy.

    python bench/pruning.py [--root ../shared/data] [--trials 30] [--epochs 8]
"""

import argparse
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, run_optuna_sweep


def sweep(root: Path, scratch: Path, name: str, trials: int, epochs: int, *overrides: str) -> dict:
    run, results = run_optuna_sweep(
        root,
        scratch,
        name,
        f"hydra.sweeper.n_trials={trials}",
        f"trainer.epochs={epochs}",
        "logger=none",
        *overrides,
    )
    return {"wall_s": run.wall_s, **results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--pruner-args", nargs="*", default=[], help="e.g. hydra.sweeper.pruner.n_warmup_steps=1"
    )
    args = parser.parse_args()
    root = args.root.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        plain = sweep(root, Path(scratch), "none", args.trials, args.epochs)
        pruned = sweep(
            root,
            Path(scratch),
            "median",
            args.trials,
            args.epochs,
            "hydra/sweeper/pruner=median",
            *args.pruner_args,
        )
    for name, r in (("no pruner", plain), ("median pruner", pruned)):
        used, wall, best = r["epochs_used"], r["wall_s"], r["best_value"]
        print(
            f"{name:14} epochs used {used:4d}  wall {wall:6.1f} s  best val_acc {best:.2f}  "
            f"trials {r['trials']}"
        )
    print(
        f"median pruner: {pruned['epochs_used'] / plain['epochs_used']:.0%} of the epochs, "
        f"{pruned['wall_s'] / plain['wall_s']:.0%} of the wall time, "
        f"best val_acc {pruned['best_value'] - plain['best_value']:+.2f} points"
    )


if __name__ == "__main__":
    main()
