"""Per-step schedulers against the per-epoch StepLR on the default model, each a whole process, alternating.

    python bench/per_step_schedules.py [--root ../shared/data] [--repeats 4]

A per-step scheduler steps after each of the epoch's 860 optimizer steps and records each step's lr
(lr_steps.csv, TensorBoard). Rounds alternate the order of the variants. Prints per variant the medians of
training time per epoch (the loop, stepping included), epoch time (with evaluation) and process wall time,
and their ratios to the per-epoch StepLR. StepLR stepped per step with step_size = 2 epochs of steps is the
same schedule as the default: its cost is the stepping alone.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, median, run_process

VARIANTS = {
    "step_lr (per epoch, the default)": [],
    "step_lr stepped per step": ["scheduler.interval=step", "scheduler.step_size=1720"],
    "onecycle": ["scheduler=onecycle"],
    "warmup_cosine": ["scheduler=warmup_cosine"],
}


def run(root: Path, run_dir: Path, overrides: list[str]) -> dict:
    process = run_process(
        [sys.executable, "-m", "src.train", f"data.root={root}", f"hydra.run.dir={run_dir}", *overrides]
    )
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    column = {name: [float(row.split(",")[header.index(name)]) for row in rows[1:]] for name in header}
    return {
        "train_s": median(column["train_time_s"]),
        "epoch_s": median(column["epoch_time_s"]),
        "wall_s": process.wall_s,
        "test_acc": json.loads((run_dir / "metrics.json").read_text())["test_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            order = list(VARIANTS.items())
            for index, (name, overrides) in enumerate(order if repeat % 2 == 0 else order[::-1]):
                results[name].append(run(args.root.resolve(), Path(scratch) / f"{repeat}-{index}", overrides))
            print(f"round {repeat + 1}/{args.repeats} done", file=sys.stderr)
    keys = ("train_s", "epoch_s", "wall_s", "test_acc")
    medians = {name: {key: median([r[key] for r in runs]) for key in keys} for name, runs in results.items()}
    base = medians[next(iter(VARIANTS))]
    print(f"{'variant':34} {'train s/epoch':>16} {'epoch s':>16} {'wall s':>14} {'test acc':>9}")
    for name, m in medians.items():
        cells = [f"{m[key]:.3f} ({m[key] / base[key]:.3f}x)" for key in ("train_s", "epoch_s", "wall_s")]
        print(f"{name:34} {cells[0]:>16} {cells[1]:>16} {cells[2]:>14} {m['test_acc']:>9.2f}")


if __name__ == "__main__":
    main()
