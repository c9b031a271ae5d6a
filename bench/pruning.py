"""The median pruner against the same Optuna sweep without it (sampler seed 42, 30 trials x 8 epochs, full
MNIST), on two search spaces:

- hparams_search=steplr_optuna (StepLR's step_size and gamma): without shared epochs
  (trainer.prefix_cache=null: what hydra-optuna-sweeper alone does), as the preset runs it (trials reuse the
  epochs they share at lr0), with the median pruner on top (prune_from=auto: asked from each trial's first
  decay), and with the pruner asked from epoch 1 (prune_from=first_epoch);
- hparams_search=steplr_lr_optuna (lr0 searched too): without and with the median pruner (prune_from=auto:
  asked from epoch 1, as trials differ from the start).

Reports the epochs the trials went through, the epochs actually trained, the wall time and the best
validation accuracy, and each pruned sweep against its search space's unpruned one.

    python bench/pruning.py [--root ../shared/data] [--trials 30] [--epochs 8] [--seed 42] [--pruner-args ...]
"""

import argparse
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, run_optuna_sweep

MEDIAN = ["hydra/sweeper/pruner=median"]
MEDIAN_FROM_EPOCH_1 = [*MEDIAN, "prune_from=first_epoch"]
# name: (preset, overrides, the unpruned sweep it is compared with)
SWEEPS = {
    "steplr, no sharing, no pruner": ("steplr_optuna", ["trainer.prefix_cache=null"], None),
    "steplr, shared epochs": ("steplr_optuna", [], None),
    "steplr, shared + median": ("steplr_optuna", MEDIAN, "steplr, shared epochs"),
    "steplr, shared + median e1": ("steplr_optuna", MEDIAN_FROM_EPOCH_1, "steplr, shared epochs"),
    "steplr_lr, no pruner": ("steplr_lr_optuna", [], None),
    "steplr_lr, median": ("steplr_lr_optuna", MEDIAN, "steplr_lr, no pruner"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42, help="the TPE sampler's seed")
    parser.add_argument(
        "--pruner-args", nargs="*", default=[], help="e.g. hydra.sweeper.pruner.n_warmup_steps=1"
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, (preset, overrides, _)) in enumerate(SWEEPS.items()):
            pruner_args = args.pruner_args if MEDIAN[0] in overrides else []
            run, summary = run_optuna_sweep(
                args.root.resolve(),
                Path(scratch),
                f"sweep{index}",
                f"hydra.sweeper.n_trials={args.trials}",
                f"hydra.sweeper.sampler.seed={args.seed}",
                f"trainer.epochs={args.epochs}",
                "logger=none",
                *overrides,
                *pruner_args,
                preset=preset,
            )
            results[name] = {
                **summary,
                "wall_s": run.wall_s,
                "trained": summary["epochs_used"] - summary["epochs_reused"],
            }
            print(f"{name}: done in {run.wall_s:.1f} s", flush=True)
    print(f"\n{'sweep':28} {'epochs run':>10} {'trained':>8} {'wall s':>7} {'best val_acc':>12}  trials")
    for name, r in results.items():
        print(
            f"{name:28} {r['epochs_used']:10d} {r['trained']:8d} {r['wall_s']:7.1f} {r['best_value']:12.2f}  "
            f"{r['trials']}"
        )
    print()
    for name, (_, _, unpruned_name) in SWEEPS.items():
        if unpruned_name is None:
            continue
        r, unpruned = results[name], results[unpruned_name]
        print(
            f"{name} vs {unpruned_name}: {r['epochs_used'] / unpruned['epochs_used']:.0%} of its epochs run, "
            f"{r['trained'] / unpruned['trained']:.0%} of its epochs trained, "
            f"{r['wall_s'] / unpruned['wall_s']:.0%} of its wall time, "
            f"best val_acc {r['best_value'] - unpruned['best_value']:+.2f} points"
        )


if __name__ == "__main__":
    main()
