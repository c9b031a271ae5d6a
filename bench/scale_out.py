"""Workers on one study: the same `hparams_search=steplr_optuna` sweep (full MNIST, 20 trials x 5 epochs)
run by 1 worker, by 2 workers (the same command started twice, n_jobs=1 each: each dispatches its next trial
as soon as its own ends) and by one sweeper with 2 joblib workers; without shared epochs, then with the
preset's shared epochs (per worker) and with one cache the workers share; and one worker's overhead per
trial with the study in PostgreSQL instead of SQLite (needs Debian's postgresql; the server is started
as the tests start theirs).

    python bench/scale_out.py [--root ../shared/data] [--trials 20] [--no-postgres]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_MNIST_ROOT, REPO

sys.path.insert(0, str(REPO / "tests"))


def sweep_command(root: Path, storage: str, trials: int, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "src.train",
        "--multirun",
        "hparams_search=steplr_optuna",
        f"data.root={root}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={trials}",
        *overrides,
    ]


def run_workers(command: list[str], workers: int, cwd: Path, env: dict[str, str]) -> float:
    """Start `workers` copies of the command at once; the wall time until the last one ends."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(workers)
    ]
    for process in processes:
        _, errors = process.communicate()
        if process.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{errors[-3000:]}")
    return time.perf_counter() - started


def study_figures(storage: str) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="steplr", storage=storage).trials
    done = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    return {
        "trials": len(done),
        "best": max(t.value for t in done if t.value is not None),
        "epochs_trained": sum(
            t.user_attrs["epochs_completed"] - t.user_attrs.get("epochs_reused", 0) for t in done
        ),
        "workers": len({t.user_attrs["worker"] for t in done}),
    }


def measure(
    name: str, root: Path, scratch: Path, trials: int, workers: int, *overrides: str, storage=None, env=None
):
    cwd = scratch / f"sweep{len(list(scratch.iterdir()))}"
    cwd.mkdir()
    storage = storage or f"sqlite:///{cwd / 'optuna.db'}"
    wall = run_workers(
        sweep_command(root, storage, trials, *overrides), workers, cwd, env or os.environ.copy()
    )
    figures = {"wall_s": wall, **study_figures(storage)}
    throughput = figures["trials"] / wall * 60
    print(
        f"{name}: {figures['trials']} trials in {wall:.1f} s ({throughput:.1f} trials/min), "
        f"{figures['epochs_trained']} epochs trained, best val_acc {figures['best']:.2f}, "
        f"{figures['workers']} workers ran trials",
        flush=True,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST_ROOT)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    root, n = args.root.resolve(), args.trials
    no_sharing = ("trainer.prefix_cache=null",)
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        one = measure("1 worker, no sharing", root, scratch, n, 1, *no_sharing)
        two = measure("2 workers, no sharing", root, scratch, n, 2, *no_sharing)
        two_single = measure(
            "2 workers of 1 thread each, no sharing",
            root,
            scratch,
            n,
            2,
            *no_sharing,
            "trainer.num_threads=1",
        )
        joblib = measure(
            "joblib, 2 workers, no sharing",
            root,
            scratch,
            n,
            1,
            *no_sharing,
            "hydra/launcher=joblib",
            "hydra.sweeper.n_jobs=2",
        )
        print(
            f"no sharing: 2 workers {one['wall_s'] / two['wall_s']:.2f}x the throughput of 1 "
            f"({one['wall_s'] / two_single['wall_s']:.2f}x with 1 thread each), "
            f"joblib {one['wall_s'] / joblib['wall_s']:.2f}x"
        )
        shared_one = measure("1 worker, shared epochs (preset)", root, scratch, n, 1)
        shared_two = measure("2 workers, shared epochs per worker (preset)", root, scratch, n, 2)
        cache = f"trainer.prefix_cache={scratch / 'shared_cache'}"
        shared_cache = measure(
            "2 workers, one shared-epochs cache beside the study", root, scratch, n, 2, cache
        )
        per_worker, one_cache = (shared_one["wall_s"] / run["wall_s"] for run in (shared_two, shared_cache))
        print(
            f"shared epochs: 2 workers {per_worker:.2f}x (per-worker caches), "
            f"{one_cache:.2f}x (one cache) the throughput of 1"
        )
        if not args.no_postgres:
            from helpers.postgres import start_postgres

            server = start_postgres()
            try:
                env = {**os.environ, "PGPASSWORD": server.password}
                os.environ["PGPASSWORD"] = server.password
                postgres = measure(
                    "1 worker, no sharing, PostgreSQL",
                    root,
                    scratch,
                    n,
                    1,
                    *no_sharing,
                    storage=server.new_database(),
                    env=env,
                )
            finally:
                server.stop()
            extra = (postgres["wall_s"] - one["wall_s"]) / n
            print(f"PostgreSQL vs SQLite: {extra * 1000:+.0f} ms per trial")


if __name__ == "__main__":
    main()
