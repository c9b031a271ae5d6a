"""Helpers for the benchmarks: run a whole process, measure its wall time and peak RSS."""

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST_ROOT = REPO.parent / "shared" / "data"


@dataclass
class ProcessRun:
    wall_s: float
    peak_rss_mib: float
    stdout: str


def run_process(args: list[str], cwd: Path = REPO) -> ProcessRun:
    """Run a command to completion; its wall time and its own peak RSS (from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({process.returncode}):\n{stdout[-3000:]}")
    return ProcessRun(wall, usage.ru_maxrss / 1024, stdout)


def seed_script(root: Path, epochs: int = 5) -> list[str]:
    return [
        sys.executable,
        str(REPO / "bench" / "seed_steplr.py"),
        "--root",
        str(root),
        "--epochs",
        str(epochs),
    ]


def seed_result(run: ProcessRun) -> dict:
    line = next(line for line in run.stdout.splitlines() if line.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_optuna_sweep(
    root: Path, scratch: Path, name: str, *overrides: str, preset: str = "steplr_optuna"
) -> tuple[ProcessRun, dict]:
    """`python -m src.train --multirun hparams_search=PRESET` into scratch/name, with its own
    study in scratch/name.db; the process run and the sweep's optimization_results.yaml."""
    sweep_dir = scratch / name
    run = run_process(
        [
            sys.executable,
            "-m",
            "src.train",
            "--multirun",
            f"hparams_search={preset}",
            f"data.root={root}",
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.storage=sqlite:///{scratch / name}.db",
            *overrides,
        ]
    )
    return run, yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
