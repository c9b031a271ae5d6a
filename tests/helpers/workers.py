"""Several sweep workers on one study: starting them, ending them, checking the study they share."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from helpers.cli import cli_env, read_json, tiny_data_overrides
from helpers.sweeps import STUDY


def sweep_command(tiny_mnist: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "src.train",
        "--multirun",
        "hparams_search=steplr_optuna",
        *tiny_data_overrides(tiny_mnist),
        "logger=none",
        "trainer.prefix_cache=null",
        *extra,
    ]


def storage_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Callable]:
    """The hydra.sweeper.storage override for a kind of storage, and how to load the study from it."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'optuna.db'}"
        return f"hydra.sweeper.storage={url}", lambda: optuna.load_study(study_name=STUDY, storage=url)
    if kind == "journal":
        path = tmp_path / "optuna.journal"
        override = (
            "hydra.sweeper.storage={_target_: optuna.storages.JournalStorage, log_storage: "
            f"{{_target_: optuna.storages.journal.JournalFileBackend, file_path: '{path}'}}}}"
        )
        return override, lambda: optuna.load_study(
            study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path)))
        )
    url = request.getfixturevalue("postgres_url")
    return f"hydra.sweeper.storage={url}", lambda: optuna.load_study(study_name=STUDY, storage=url)


def start_worker(command: list[str], cwd: Path, log_name: str) -> subprocess.Popen:
    """One sweep worker, in a session of its own (so it can be killed with its children)."""
    log = open(cwd / log_name, "w")  # noqa: SIM115  (closed with the process by finish())
    return subprocess.Popen(
        command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True
    )


def finish(worker: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return worker.wait(timeout)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count toward n_trials: finished, not given up for a dead worker."""
    return [t for t in trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]


def check_study_finished_together(
    trials: list[FrozenTrial], n_trials: int, n_workers: int, cwd: Path
) -> None:
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = counted(trials)
    assert n_trials <= len(done) <= n_trials + n_workers - 1
    assert all(t.state == TrialState.COMPLETE for t in done)
    fresh = [tuple(sorted(t.params.items())) for t in done if "retry_of" not in t.user_attrs]
    assert len(set(fresh)) == len(fresh), "two trials share parameters the sampler proposed once"
    run_dirs = [cwd / t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == len(run_dirs)
    for trial, run_dir in zip(done, run_dirs, strict=True):
        assert read_json(run_dir / "metrics.json")["status"] == "completed"
        assert trial.value == read_json(run_dir / "metrics.json")["val_acc"]
    sweep_dirs_by_worker: dict[str, set[Path]] = {}
    for trial, run_dir in zip(done, run_dirs, strict=True):
        sweep_dirs_by_worker.setdefault(trial.user_attrs["worker"], set()).add(run_dir.parent)
    assert all(len(dirs) == 1 for dirs in sweep_dirs_by_worker.values()), "one sweep directory per worker"
    assert len(set.union(*sweep_dirs_by_worker.values())) == len(sweep_dirs_by_worker)
