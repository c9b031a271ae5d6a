"""The same Optuna sweep (sampler seed 42, 30 trials x 8 epochs, full MNIST) three ways: without
shared epochs (trainer.prefix_cache=null: what hydra-optuna-sweeper alone does), as the
hparams_search=steplr_optuna preset runs it (trials reuse the epochs they share at lr0), and with
the median pruner on top, asked from each trial's first decay on (the default) and from epoch 1
(prune_before_first_decay=true). Reports the epochs the trials went through, the epochs actually trained,
the wall time and the best validation accuracy.

    python bench/pruning.py [--root ../shared/data] [--trials 30] [--epochs 8] [--pruner-args ...]
"""

import argparse
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, run_optuna_sweep


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
    variants = {
        "no sharing, no pruner": ["trainer.prefix_cache=null"],
        "shared epochs": [],
        "shared epochs + median": ["hydra/sweeper/pruner=median", *args.pruner_args],
        "+ median from epoch 1": [
            "hydra/sweeper/pruner=median",
            "prune_before_first_decay=true",
            *args.pruner_args,
        ],
    }
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, overrides) in enumerate(variants.items()):
            run, summary = run_optuna_sweep(
                args.root.resolve(),
                Path(scratch),
                f"sweep{index}",
                f"hydra.sweeper.n_trials={args.trials}",
                f"trainer.epochs={args.epochs}",
                "logger=none",
                *overrides,
            )
            results[name] = {**summary, "wall_s": run.wall_s}
    baseline = results["no sharing, no pruner"]
    print(f"{'sweep':24} {'epochs run':>10} {'trained':>8} {'wall s':>7} {'best val_acc':>12}  trials")
    for name, r in results.items():
        trained = r["epochs_used"] - r["epochs_reused"]
        print(
            f"{name:24} {r['epochs_used']:10d} {trained:8d} {r['wall_s']:7.1f} {r['best_value']:12.2f}  "
            f"{r['trials']}"
        )
    for name, r in list(results.items())[1:]:
        trained = r["epochs_used"] - r["epochs_reused"]
        print(
            f"{name}: {trained / baseline['epochs_used']:.0%} of the baseline's epochs trained, "
            f"{r['wall_s'] / baseline['wall_s']:.0%} of its wall time, "
            f"best val_acc {r['best_value'] - baseline['best_value']:+.2f} points"
        )


if __name__ == "__main__":
    main()
