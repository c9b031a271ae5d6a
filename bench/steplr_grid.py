"""Validation accuracy per epoch over a step_size x gamma grid (full MNIST, 8 epochs, one seed): why a pruner
cannot judge a StepLR trial before its first decay.

Every trial trains exactly the same epochs until its learning rate first leaves lr0 (shared epochs make the
grid cheap), so until then their curves are one curve; what sets them apart, and which is best at the end,
shows only after their decays. Prints one row per (step_size, gamma): val_acc after each epoch.

    python bench/steplr_grid.py [--root ../shared/data] [--epochs 8] [--gammas 0.05,0.1,0.3,0.8]
"""

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, run_process


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--gammas", default="0.05,0.1,0.3,0.8")
    args = parser.parse_args()
    step_sizes = ",".join(str(s) for s in range(1, args.epochs + 1))
    with tempfile.TemporaryDirectory() as scratch:
        sweep_dir = Path(scratch) / "grid"
        run = run_process(
            [
                sys.executable,
                "-m",
                "src.train",
                "--multirun",
                f"scheduler.step_size={step_sizes}",
                f"scheduler.gamma={args.gammas}",
                f"trainer.epochs={args.epochs}",
                f"data.root={args.root.resolve()}",
                "logger=none",
                f"hydra.sweep.dir={sweep_dir}",
                f"trainer.prefix_cache={sweep_dir}/.prefix_cache",
            ]
        )
        curves = {}
        for run_dir in sweep_dir.iterdir():
            if not (run_dir / "metrics.json").exists():
                continue
            params = json.loads((run_dir / "metrics.json").read_text())["hyperparameters"]
            with open(run_dir / "metrics.csv", newline="") as f:
                values = [float(row["val_acc"]) for row in csv.DictReader(f)]
            curves[(params["scheduler.step_size"], params["scheduler.gamma"])] = values
    print(f"{len(curves)} runs in {run.wall_s:.1f} s\n")
    epoch_columns = " ".join(f"{'e' + str(epoch):>6}" for epoch in range(1, args.epochs + 1))
    print(f"{'step_size':>9} {'gamma':>6}  {epoch_columns}")
    for (step_size, gamma), values in sorted(curves.items()):
        print(f"{step_size:9d} {gamma:6g}  " + " ".join(f"{v:6.2f}" for v in values))
    best = max(curves, key=lambda key: curves[key][-1])
    print(f"\nbest at the last epoch: step_size {best[0]}, gamma {best[1]:g}: {curves[best][-1]:.2f}")


if __name__ == "__main__":
    main()
