"""A 20-trial x 5-epoch Optuna sweep (the hparams_search=steplr_optuna defaults) on the full MNIST,
with the default launcher and with 2 joblib workers, against the seed's script run as a process.

    python bench/sweep_throughput.py [--root ../shared/data] [--trials 20]
"""

import argparse
import json
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, median, run_optuna_sweep, run_process, seed_script


def sweep(root: Path, scratch: Path, name: str, trials: int, *overrides: str) -> dict:
    run, results = run_optuna_sweep(root, scratch, name, f"hydra.sweeper.n_trials={trials}", *overrides)
    sweep_dir = scratch / name
    trial_times = []
    for metrics_file in sweep_dir.glob("*/metrics.csv"):
        rows = metrics_file.read_text().strip().splitlines()
        column = rows[0].split(",").index("epoch_time_s")
        trial_times.append(sum(float(r.split(",")[column]) for r in rows[1:]))
    return {
        "wall_s": run.wall_s,
        "trial_train_s": median(trial_times),
        "best": results["best_value"],
        "complete": results["trials"]["complete"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    root = args.root.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        seed_walls = [run_process(seed_script(root)).wall_s]
        sequential = sweep(root, Path(scratch), "sequential", args.trials)
        seed_walls.append(run_process(seed_script(root)).wall_s)
        parallel = sweep(
            root, Path(scratch), "joblib", args.trials, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"
        )
    seed_wall = median(seed_walls)
    print(json.dumps({"seed_wall_s": seed_walls, "sequential": sequential, "joblib": parallel}, indent=1))
    for name, result, workers in (("default launcher", sequential, 1), ("joblib, 2 workers", parallel, 2)):
        per_trial = result["wall_s"] * workers / args.trials  # worker-seconds per trial
        print(
            f"{name}: {args.trials} trials in {result['wall_s']:.1f} s "
            f"({result['wall_s'] / (4 * seed_wall):.2f}x the wall of 4 seed runs, "
            f"{seed_wall / per_trial:.1f}x the seed's trial throughput), "
            f"per-trial overhead {per_trial - result['trial_train_s']:.2f} worker-s "
            f"(trial training {result['trial_train_s']:.2f} s), best val_acc {result['best']:.2f}"
        )
    print(
        f"seed script: {seed_wall:.1f} s per run; joblib vs default launcher: "
        f"{sequential['wall_s'] / parallel['wall_s']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
