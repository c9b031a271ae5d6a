"""`python -m src.train` against the seed's script, each a whole process, alternating, on the full MNIST.

    python bench/train_vs_seed.py [--root ../shared/data] [--repeats 3]

Prints per variant the medians of process wall time, training time per epoch, final test accuracy
and peak RSS, and the ratios to the seed. `src.train (seed pixels)` runs with data.normalize=false:
the seed's exact preprocessing, to compare accuracy like for like.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, REPO, median, run_process, seed_result, seed_script


def project_run(root: Path, run_dir: Path, *overrides: str) -> dict:
    run = run_process(
        [sys.executable, "-m", "src.train", f"data.root={root}", f"hydra.run.dir={run_dir}", *overrides]
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    train_times = [float(r.split(",")[header.index("train_time_s")]) for r in rows[1:]]
    return {
        "wall_s": run.wall_s,
        "train_s_per_epoch": sum(train_times) / len(train_times),
        "test_acc": metrics["test_acc"],
        "peak_rss_mib": run.peak_rss_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = args.root.resolve()
    results: dict[str, list[dict]] = {"seed script": [], "src.train": [], "src.train (seed pixels)": []}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.repeats):
            seed = run_process(seed_script(root))
            results["seed script"].append(
                {**seed_result(seed), "wall_s": seed.wall_s, "peak_rss_mib": seed.peak_rss_mib}
            )
            results["src.train"].append(project_run(root, Path(scratch) / f"default{i}"))
            results["src.train (seed pixels)"].append(
                project_run(root, Path(scratch) / f"raw{i}", "data.normalize=false")
            )
            print(f"round {i + 1}/{args.repeats} done", file=sys.stderr)
    keys = ("wall_s", "train_s_per_epoch", "test_acc", "peak_rss_mib")
    medians = {name: {k: median([r[k] for r in runs]) for k in keys} for name, runs in results.items()}
    base = medians["seed script"]
    print(f"{'variant':26} {'wall s':>8} {'train s/epoch':>14} {'test acc':>9} {'peak RSS MiB':>13}")
    for name, m in medians.items():
        wall, per_epoch, accuracy, rss = (m[k] for k in keys)
        print(f"{name:26} {wall:8.2f} {per_epoch:14.3f} {accuracy:9.2f} {rss:13.0f}")
    for name in ("src.train", "src.train (seed pixels)"):
        m = medians[name]
        print(
            f"{name}: wall {m['wall_s'] / base['wall_s']:.2f}x the seed's, "
            f"training {base['train_s_per_epoch'] / m['train_s_per_epoch']:.1f}x faster per epoch, "
            f"test accuracy {m['test_acc'] - base['test_acc']:+.2f} points, "
            f"peak RSS {m['peak_rss_mib']:.0f} MiB ({m['peak_rss_mib'] / base['peak_rss_mib']:.2f}x)"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
