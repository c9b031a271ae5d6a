"""`python -m src.compare` over 1,000 run directories (copies of one real run).

python bench/compare_speed.py RUN_DIR [--copies 1000]
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import median, run_process


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run directory made by python -m src.train")
    parser.add_argument("--copies", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        sweep = Path(scratch) / "multirun" / "sweep"
        for i in range(args.copies):
            shutil.copytree(args.run_dir, sweep / str(i), ignore=shutil.ignore_patterns("*.pt", "events.*"))
        walls = [run_process([sys.executable, "-m", "src.compare", str(sweep)]).wall_s for _ in range(3)]
    print(f"python -m src.compare over {args.copies} run directories: {median(walls):.2f} s (median of 3)")


if __name__ == "__main__":
    main()
