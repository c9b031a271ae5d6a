"""A 20-trial x 5-epoch Optuna sweep (the hparams_search=steplr_optuna defaults) on the full MNIST,
with the default launcher and with 2 joblib workers, each with the epochs trials share at lr0 reused
(the preset's default) and without (trainer.prefix_cache=null), against the seed's script run as a process.

    python bench/sweep_throughput.py [--root ../shared/data] [--trials 20]
"""

import argparse
import json
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, median, run_optuna_sweep, run_process, seed_script


def sweep(root: Path, scratch: Path, name: str, trials: int, *overrides: str) -> dict:
    run, results = run_optuna_sweep(root, scratch, name, f"hydra.sweeper.n_trials={trials}", *overrides)
    trial_times = []
    for metrics_file in (scratch / name).glob("*/metrics.csv"):
        rows = metrics_file.read_text().strip().splitlines()
        column = rows[0].split(",").index("epoch_time_s")
        trial_times.append(sum(float(r.split(",")[column]) for r in rows[1:]))
    return {
        "wall_s": run.wall_s,
        "trial_train_s": sum(trial_times) / len(trial_times),
        "best": results["best_value"],
        "complete": results["trials"]["complete"],
        "epochs_trained": results["epochs_used"] - results["epochs_reused"],
    }


LAUNCHERS = {
    "default launcher": (1, []),
    "joblib, 2 workers": (2, ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]),
}
SHARING = {"shared epochs": [], "no sharing": ["trainer.prefix_cache=null"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    root = args.root.resolve()
    seed_walls, results = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for sharing, sharing_overrides in SHARING.items():
            seed_walls.append(run_process(seed_script(root)).wall_s)
            for launcher, (workers, launcher_overrides) in LAUNCHERS.items():
                overrides = [*launcher_overrides, *sharing_overrides]
                result = sweep(root, Path(scratch), f"sweep{len(results)}", args.trials, *overrides)
                results[f"{launcher}, {sharing}"] = {**result, "workers": workers}
    seed_wall = median(seed_walls)
    print(json.dumps({"seed_wall_s": seed_walls, **results}, indent=1))
    for name, result in results.items():
        per_trial = result["wall_s"] * result["workers"] / args.trials  # worker-seconds per trial
        print(
            f"{name}: {args.trials} trials in {result['wall_s']:.1f} s "
            f"({result['wall_s'] / (4 * seed_wall):.2f}x the wall of 4 seed runs, "
            f"{seed_wall / per_trial:.1f}x the seed's trial throughput per worker), "
            f"{result['epochs_trained']} epochs trained, "
            f"per-trial overhead {per_trial - result['trial_train_s']:.2f} worker-s "
            f"(mean trial training {result['trial_train_s']:.2f} s), best val_acc {result['best']:.2f}"
        )
    for sharing in SHARING:
        sequential, parallel = (results[f"{launcher}, {sharing}"]["wall_s"] for launcher in LAUNCHERS)
        print(f"{sharing}: joblib vs default launcher {sequential / parallel:.2f}x faster")
    print(f"seed script: {seed_wall:.1f} s per run")


if __name__ == "__main__":
    main()
