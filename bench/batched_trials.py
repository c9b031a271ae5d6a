"""Batched trials (hydra/launcher=batched) against the basic launcher and the seed's script, full MNIST.

1. The 20-trial x 5-epoch default sweep (hparams_search=steplr_optuna): basic launcher with shared epochs
   (the preset's default) and without, batched launcher (all trials one batch, and batches of 10, each spread
   over one process per CPU thread, its default; and one batch in one process), each over
   the sampler seeds given; wall time, in seed-script runs; trial throughput; per-trial overhead
   (wall x workers / trials - training, workers: the processes a batch trains in); best validation accuracy
   per sampler seed; and the floor of that overhead in a cold sweep: the imports a launch process needs before
   its first trial trains, and of those what any process training with a torch optimizer imports.
2. The MLP and the CNN, 4 and 10 trials (a grid over optimizer.lr, --epochs-big epochs), basic vs batched
   (trainer.stacking=auto: the launcher may decide one at a time is faster, and says so).
3. What a further batch costs besides training: the batched sweep of 20 trials (one batch) against 60 (three
   batches of 20), one process, alternated --repeats times.
4. README's grid over seeds (5 seeds x 2 step sizes, 8 epochs), basic launcher (shared epochs) vs batched
   (a block of the stack per seed), and the largest difference between the two in any run's val_acc.

    python bench/batched_trials.py --root ../shared/data [--sampler-seeds 42 43 44] [--epochs-big 1]
        [--skip-big] [--skip-further] [--skip-seeds] [--repeats 3]
"""

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, run_optuna_sweep, run_process, seed_script


def training_seconds(sweep_dir: Path) -> float:
    """Sum of every trial's epoch times (a batched trial's share of its group's epochs)."""
    total = 0.0
    for metrics_file in sweep_dir.glob("*/metrics.csv"):
        rows = metrics_file.read_text().strip().splitlines()
        column = rows[0].split(",").index("epoch_time_s")
        total += sum(float(r.split(",")[column]) for r in rows[1:])
    return total


SWEEPS = {
    "basic, shared epochs": [],
    "basic, no sharing": ["trainer.prefix_cache=null"],
    "batched, 1 batch of 20": ["hydra/launcher=batched", "hydra.sweeper.n_jobs=20"],
    "batched, 2 batches of 10": ["hydra/launcher=batched", "hydra.sweeper.n_jobs=10"],
    "batched, 1 batch of 20, 1 process": [
        "hydra/launcher=batched",
        "hydra.sweeper.n_jobs=20",
        "hydra.launcher.processes=1",
    ],
}


LAUNCH_IMPORTS = """
import importlib
import src.train
from hydra_plugins.batched_launcher.collector import imports_without_collector
from hydra_plugins.batched_launcher.launcher import BatchedLauncherConf
with imports_without_collector():  # as the launch process imports them
    for module in BatchedLauncherConf().preload:
        importlib.import_module(module)
"""


# What any process pays before it can train with one of torch's optimizers, as the launch process trains:
# the interpreter, torch, and one Adam step without torch._dynamo (src/dynamo_on_demand.py); imported as
# the launch process imports, with the collector paused.
TORCH_OPTIMIZER_IMPORTS = """
from hydra_plugins.batched_launcher.collector import imports_without_collector
with imports_without_collector():
    import torch
    from src.dynamo_on_demand import defer_dynamo_import, step_without_dynamo
defer_dynamo_import()
param = torch.zeros(1, requires_grad=True)
optimizer = torch.optim.Adam([param])
param.grad = torch.ones(1)
step_without_dynamo(optimizer)
"""


def fastest_process_seconds(code: str, repeats: int = 3) -> float:
    """The fastest of `repeats` fresh interpreters running `code`, with the interpreter's start."""
    return min(run_process([sys.executable, "-c", code]).wall_s for _ in range(repeats))


def launch_imports_seconds() -> float:
    """What the launch process imports before its first trial can train (the app, hydra.launcher.preload:
    torch, the study's database libraries), in a fresh process."""
    return fastest_process_seconds(LAUNCH_IMPORTS)


def default_sweeps(root: Path, scratch: Path, seeds: list[int], trials: int) -> dict:
    results: dict = {name: [] for name in SWEEPS}
    for seed in seeds:
        for name, overrides in SWEEPS.items():
            tag = f"{re.sub(r'[^a-z0-9]+', '_', name)}_{seed}"
            run, summary = run_optuna_sweep(
                root,
                scratch,
                tag,
                f"hydra.sweeper.n_trials={trials}",
                f"hydra.sweeper.sampler.seed={seed}",
                "logger=none",
                *overrides,
            )
            train_s = training_seconds(scratch / tag)
            workers = max([1, *(int(n) for n in re.findall(r"trials train in (\d+) processes", run.stdout))])
            results[name].append(
                {
                    "sampler_seed": seed,
                    "wall_s": run.wall_s,
                    "training_s": train_s,
                    "processes": workers,
                    # training_s sums the processes' training: the overhead is counted in process-seconds
                    "overhead_per_trial_s": (run.wall_s * workers - train_s) / trials,
                    "overhead_per_trial_wall_s": (run.wall_s - train_s / workers) / trials,
                    "best_val_acc": summary["best_value"],
                    "complete": summary["trials"]["complete"],
                }
            )
    return results


def further_batches(root: Path, scratch: Path, repeats: int) -> dict[int, list[float]]:
    """Seconds besides training (wall - training) of batched sweeps of 20 and 60 trials in batches of 20."""
    besides: dict[int, list[float]] = {20: [], 60: []}
    for repeat in range(repeats):
        for trials in besides:
            tag = f"further_{trials}_{repeat}"
            run, _ = run_optuna_sweep(
                root,
                scratch,
                tag,
                f"hydra.sweeper.n_trials={trials}",
                "hydra/launcher=batched",
                "hydra.sweeper.n_jobs=20",
                "hydra.launcher.processes=1",
                "logger=none",
            )
            besides[trials].append(run.wall_s - training_seconds(scratch / tag))
    return besides


def grid(
    root: Path, scratch: Path, name: str, model: str, trials: int, epochs: int, *extra: str
) -> tuple[float, list[str]]:
    rates = ",".join(f"{0.0005 * (i + 1):g}" for i in range(trials))
    run = run_process(
        [
            sys.executable,
            "-m",
            "src.train",
            "--multirun",
            f"model={model}",
            f"optimizer.lr={rates}",
            f"trainer.epochs={epochs}",
            f"data.root={root}",
            f"hydra.sweep.dir={scratch / name}",
            "logger=none",
            *extra,
        ]
    )
    decided = [line.split("] ", 1)[-1] for line in run.stdout.splitlines() if "trials train" in line]
    return run.wall_s, decided


SEED_GRID = ["trainer.seed=0,1,2,3,4", "scheduler.step_size=3,5", "scheduler.gamma=0.05", "trainer.epochs=8"]


def seed_grid(root: Path, scratch: Path) -> dict[str, float]:
    """README's --over-seeds grid with each launcher: walls, and the largest val_acc difference of a run."""
    walls, val_accs = {}, {}
    for launcher in ("basic", "batched"):
        sweep_dir = scratch / f"seeds-{launcher}"
        command = [sys.executable, "-m", "src.train", "--multirun", *SEED_GRID, f"data.root={root}"]
        command += [f"hydra.sweep.dir={sweep_dir}", "logger=none", f"hydra/launcher={launcher}"]
        walls[launcher] = run_process(command).wall_s
        val_accs[launcher] = {
            path.parent.name: json.loads(path.read_text())["val_acc"]
            for path in sweep_dir.glob("*/metrics.json")
        }
    assert val_accs["basic"].keys() == val_accs["batched"].keys() and len(val_accs["basic"]) == 10
    largest = max(abs(val_accs["basic"][job] - val_accs["batched"][job]) for job in val_accs["basic"])
    return {"basic_s": walls["basic"], "batched_s": walls["batched"], "largest_val_acc_difference": largest}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sampler-seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs-big", type=int, default=1)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-further", action="store_true")
    parser.add_argument("--skip-seeds", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = args.root.resolve()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        seed_walls = [run_process(seed_script(root)).wall_s for _ in range(2)]
        sweeps = default_sweeps(root, scratch, args.sampler_seeds, args.trials)
        seed_walls.append(run_process(seed_script(root)).wall_s)
        imports_s = launch_imports_seconds()
        torch_optimizer_s = fastest_process_seconds(TORCH_OPTIMIZER_IMPORTS)
        further = {} if args.skip_further else further_batches(root, scratch, args.repeats)
        seeds = {} if args.skip_seeds else seed_grid(root, scratch)
        big = {}
        if not args.skip_big:
            for model in ("mlp", "cnn"):
                for trials in (4, 10):
                    basic, _ = grid(root, scratch, f"{model}{trials}a", model, trials, args.epochs_big)
                    batched, decided = grid(
                        root,
                        scratch,
                        f"{model}{trials}b",
                        model,
                        trials,
                        args.epochs_big,
                        "hydra/launcher=batched",
                    )
                    one, _ = grid(
                        root,
                        scratch,
                        f"{model}{trials}o",
                        model,
                        trials,
                        args.epochs_big,
                        "hydra/launcher=batched",
                        "hydra.launcher.processes=1",
                    )
                    big[f"{model}, {trials} trials"] = {
                        "basic_s": basic,
                        "batched_s": batched,
                        "batched_1_process_s": one,
                        "decided": decided,
                    }
    seed_wall = statistics.median(seed_walls)
    print(
        json.dumps(
            {
                "seed_wall_s": seed_walls,
                "launch_imports_s": imports_s,
                "torch_optimizer_imports_s": torch_optimizer_s,
                "sweeps": sweeps,
                "big": big,
                "besides_training_s": further,
                "seed_grid": seeds,
            },
            indent=1,
        )
    )
    basic_wall = statistics.median(r["wall_s"] for r in sweeps["basic, shared epochs"])
    print(f"\nseed script: {seed_wall:.1f} s per run (median of {len(seed_walls)})")
    for name, runs in sweeps.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        overhead = statistics.median(r["overhead_per_trial_s"] for r in runs)
        overhead_wall = statistics.median(r["overhead_per_trial_wall_s"] for r in runs)
        bests = ", ".join(f"{r['best_val_acc']:.2f}" for r in runs)
        print(
            f"{name}: {args.trials} trials in {wall:.1f} s = {wall / seed_wall:.2f} seed runs, "
            f"{basic_wall / wall:.2f}x the trial throughput of the preset (basic, shared epochs), "
            f"overhead {overhead:.2f} s per trial ({overhead_wall:.2f} s against the wall); "
            f"best val_acc per sampler seed: {bests}"
        )
    print(
        f"a launch process's imports before its first trial trains: {imports_s:.1f} s (fastest of 3 fresh "
        f"processes) = {imports_s / args.trials:.2f} s per trial against the wall, the floor of a cold "
        f"{args.trials}-trial sweep's overhead; of that, torch and one step of a torch optimizer (without "
        f"torch._dynamo, as the launch process steps): {torch_optimizer_s:.1f} s = "
        f"{torch_optimizer_s / args.trials:.2f} s per trial"
    )
    if further:
        one, three = (statistics.median(further[n]) for n in (20, 60))
        print(
            f"besides training, one process: 20 trials {one:.1f} s, 60 trials {three:.1f} s (medians of "
            f"{args.repeats}): a further batch of 20 costs {(three - one) / 2:.1f} s, "
            f"{(three - one) / 40:.3f} s per trial"
        )
    if seeds:
        print(
            f"grid over 5 seeds x 2 settings, 8 epochs: basic {seeds['basic_s']:.1f} s, batched "
            f"{seeds['batched_s']:.1f} s ({seeds['basic_s'] / seeds['batched_s']:.2f}x); largest val_acc "
            f"difference of a run: {seeds['largest_val_acc_difference']:.2f} points"
        )
    for name, result in big.items():
        one = result["batched_1_process_s"]
        print(
            f"{name}: basic {result['basic_s']:.1f} s, batched {result['batched_s']:.1f} s "
            f"({result['basic_s'] / result['batched_s']:.2f}x), in 1 process "
            f"{one:.1f} s ({result['basic_s'] / one:.2f}x)"
            f" | {' / '.join(result['decided'])}"
        )


if __name__ == "__main__":
    main()
