"""Many workers on one Optuna study: the same sweep command started several times at once, on SQLite, an
Optuna journal file and a real PostgreSQL server; workers killed or hung mid-trial; credentials that never
reach a file. Workers run from a scratch directory, with Hydra's default (per-worker) sweep directories."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from helpers.cli import cli_env, read_json, tiny_data_overrides
from helpers.workers import check_study_finished_together, finish, start_worker, storage_for, sweep_command
from optuna.trial import FrozenTrial, TrialState

# Real servers, several processes, long trials: the slow tier (make test-all; CI runs it).
pytestmark = pytest.mark.slow


STUDY = "steplr"


@pytest.mark.parametrize("n_workers", [2, 3])
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_workers_started_together_finish_one_study(tiny_mnist, tmp_path, request, kind, n_workers):
    """The same command in N terminals at once, against a storage nobody has created yet."""
    override, load = storage_for(kind, tmp_path, request)
    n_trials = 2 * n_workers
    command = sweep_command(tiny_mnist, override, f"hydra.sweeper.n_trials={n_trials}", "trainer.epochs=3")
    workers = [start_worker(command, tmp_path, f"worker{i}.log") for i in range(n_workers)]
    codes = [finish(worker) for worker in workers]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(n_workers)]
    assert codes == [0] * n_workers, "\n\n".join(log[-3000:] for log in logs)
    assert not [log for log in logs if "Traceback" in log]
    trials = load().trials
    check_study_finished_together(trials, n_trials, n_workers, tmp_path)
    assert len({t.user_attrs["worker"] for t in trials}) == n_workers, "every worker ran trials"
    assert not [t for t in trials if t.state == TrialState.FAIL]  # no trial of a live worker was touched


def running_trial_with_an_epoch_done(load: Callable, worker: subprocess.Popen, cwd: Path) -> FrozenTrial:
    """Wait until `worker` runs a trial that finished an epoch (its metrics.csv exists) but not the run."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be stopped mid-trial"
        try:
            running = load().get_trials(states=(TrialState.RUNNING,))
        # the study is not created yet, or (PostgreSQL) Optuna's tables were being created by the worker as
        # this created them too: DuplicateTable, which the sweeper retries (storage.py) and Optuna does not
        except (KeyError, sqlalchemy.exc.DBAPIError):
            running = []
        for trial in running:
            run_dir = cwd / trial.user_attrs.get("run_dir", "-")
            if (
                trial.user_attrs.get("worker", "").endswith(f":{worker.pid}")
                and (run_dir / "metrics.csv").exists()
                and not (run_dir / "metrics.json").exists()
            ):
                return trial
        time.sleep(0.05)
    raise TimeoutError("no running trial of the worker")


def check_rerun_by_survivor(trials: list[FrozenTrial], lost: FrozenTrial, survivor: subprocess.Popen) -> None:
    failed = trials[lost.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"] is True
    retries = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert len(retries) == 1 and retries[0].params == lost.params
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["worker"].endswith(f":{survivor.pid}")
    assert retries[0].system_attrs["failed_trial"] == lost.number  # Optuna's own retry bookkeeping


# Long enough trials (tiny data, small batches) that a worker can be stopped inside one.
SLOW_TRIALS = ("trainer.epochs=12", "trainer.batch_size=8", "hydra.sweeper.n_trials=4")


def test_a_killed_worker_trial_is_failed_and_rerun_by_the_other_worker(tiny_mnist, tmp_path):
    override, load = storage_for("sqlite", tmp_path, None)
    command = sweep_command(tiny_mnist, override, *SLOW_TRIALS)
    victim = start_worker(command, tmp_path, "victim.log")
    lost = running_trial_with_an_epoch_done(load, victim, tmp_path)
    survivor = start_worker(command, tmp_path, "survivor.log")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert finish(survivor) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    trials = load().trials
    check_rerun_by_survivor(trials, lost, survivor)
    assert "ended while the trial ran" in trials[lost.number].user_attrs["fail_reason"]
    check_study_finished_together(trials, 4, 2, tmp_path)


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_a_hung_worker_trial_goes_stale_and_the_worker_ends_cleanly_when_it_wakes(
    tiny_mnist, tmp_path, request, kind
):
    """SIGSTOP stands for a lost machine: the process is there, its heartbeats are not. The other worker
    fails the trial once its heartbeat is older than the grace period and runs it again; the hung worker,
    woken up, finds its trial taken over and ends without a crash. RDB storages keep Optuna's heartbeats,
    the journal file a heartbeat attribute of the trial."""
    override, load = storage_for(kind, tmp_path, request)
    heartbeat = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")
    command = sweep_command(tiny_mnist, override, *SLOW_TRIALS, *heartbeat)
    hung = start_worker(command, tmp_path, "hung.log")
    lost = running_trial_with_an_epoch_done(load, hung, tmp_path)
    os.killpg(hung.pid, signal.SIGSTOP)
    survivor = start_worker(command, tmp_path, "survivor.log")
    try:
        assert finish(survivor) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    finally:
        os.killpg(hung.pid, signal.SIGCONT)
    assert finish(hung) == 0, (tmp_path / "hung.log").read_text()[-3000:]
    assert "had been given up by another worker" in (tmp_path / "hung.log").read_text()
    trials = load().trials
    check_rerun_by_survivor(trials, lost, survivor)
    assert trials[lost.number].user_attrs["fail_reason"].startswith("stale heartbeat")
    check_study_finished_together(trials, 4, 2, tmp_path)


def test_two_sweeps_with_other_settings_started_together_never_mix_in_one_study(tiny_mnist, tmp_path):
    """Two sweeps that differ in a fixed value start on one new study at the same instant: at most one
    of them goes on (the other stops with one line), and every trial in the study is of one setting."""
    override, load = storage_for("sqlite", tmp_path, None)
    lrs = ("0.002", "0.003")
    workers = [
        start_worker(
            sweep_command(
                tiny_mnist, override, "hydra.sweeper.n_trials=3", "trainer.epochs=1", f"optimizer.lr={lr}"
            ),
            tmp_path,
            f"lr{lr}.log",
        )
        for lr in lrs
    ]
    codes = [finish(worker) for worker in workers]
    logs = [(tmp_path / f"lr{lr}.log").read_text() for lr in lrs]
    refused = [log for code, log in zip(codes, logs, strict=True) if code != 0]
    assert refused, "both sweeps ran on one study"
    for log in refused:
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "other settings" in errors[0] and "Traceback" not in log
    trials = load().trials
    lrs_run = {
        yaml_value(tmp_path / t.user_attrs["run_dir"] / ".hydra" / "config.yaml", "lr") for t in trials
    }
    assert len(lrs_run) <= 1
    assert len(trials) == (3 if len(refused) == 1 else 0)


def yaml_value(path: Path, key: str):
    import yaml

    def find(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key:
                    return v
                if (found := find(v)) is not None:
                    return found
        return None

    return find(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("password_from", ["PGPASSWORD", "interpolation"])
def test_a_postgres_password_from_the_environment_reaches_no_file_and_no_log(
    tiny_mnist, tmp_path, postgres_server, monkeypatch, password_from
):
    url = postgres_server.new_database()
    password = postgres_server.password
    monkeypatch.delenv("PGPASSWORD", raising=False)
    if password_from == "PGPASSWORD":  # libpq's own variable: the URL names no password
        monkeypatch.setenv("PGPASSWORD", password)
        storage = url
    else:  # the URL names it through OmegaConf's oc.env, resolved in memory only
        monkeypatch.setenv("SWEEP_DB_PASSWORD", password)
        storage = url.replace("sweeper@", "sweeper:${oc.env:SWEEP_DB_PASSWORD}@")
    command = [
        *sweep_command(tiny_mnist, "hydra.sweeper.n_trials=2", "trainer.epochs=1"),
        "logger=tensorboard",
    ]
    result = subprocess.run(
        [*command, f"hydra.sweeper.storage={storage}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert password not in result.stdout + result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"hydra.yaml", "overrides.yaml", "train.log", "optimization_results.yaml", "metrics.json"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert not [p for p in files if password.encode() in p.read_bytes()]
    study = optuna.load_study(study_name=STUDY, storage=url.replace("sweeper@", f"sweeper:{password}@"))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    results = next(tmp_path.rglob("optimization_results.yaml")).read_text()
    assert f"127.0.0.1:{postgres_server.port}" in results
    if password_from == "interpolation":
        assert "sweeper:***@" in results


def test_workers_share_epochs_through_a_cache_beside_the_study_with_results_as_from_scratch(
    tiny_mnist, tmp_path
):
    """trainer.prefix_cache on a filesystem both workers see: a worker reuses epochs the other trained, and a
    trial that did so ends exactly where the same trial trained from scratch ends."""
    override, load = storage_for("sqlite", tmp_path, None)
    command = sweep_command(tiny_mnist, override, "hydra.sweeper.n_trials=6", "trainer.epochs=3")
    command[command.index("trainer.prefix_cache=null")] = f"trainer.prefix_cache={tmp_path / 'shared_cache'}"
    workers = [start_worker(command, tmp_path, f"worker{i}.log") for i in range(2)]
    assert [finish(worker) for worker in workers] == [0, 0]
    trials = load().trials
    check_study_finished_together(trials, 6, 2, tmp_path)
    metrics = {t.number: read_json(tmp_path / t.user_attrs["run_dir"] / "metrics.json") for t in trials}
    worker_of_run = {
        str((tmp_path / t.user_attrs["run_dir"]).resolve()): t.user_attrs["worker"] for t in trials
    }
    across = [
        t
        for t in trials
        if metrics[t.number]["epochs_reused"]
        and worker_of_run[metrics[t.number]["reused_from"]] != t.user_attrs["worker"]
    ]
    assert across, "no worker reused epochs the other one trained"
    trial = across[0]
    scratch = tmp_path / "scratch"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            f"hydra.run.dir={scratch}",
            *tiny_data_overrides(tiny_mnist),
            "logger=none",
            "trainer.epochs=3",
            *(f"{name}={value}" for name, value in trial.params.items()),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_json(scratch / "metrics.json")["val_acc"] == metrics[trial.number]["val_acc"]
    assert read_json(scratch / "metrics.json")["test_acc"] == metrics[trial.number]["test_acc"]


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_workers_given_one_sweep_directory_write_each_trial_into_a_directory_of_its_own(
    tiny_mnist, tmp_path, request, launcher
):
    """`hydra.sweep.dir=...` given to every worker: before, both numbered their jobs from 0 and wrote their
    runs into the same directories (one's metrics over the other's)."""
    override, load = storage_for("sqlite", tmp_path, request)
    shared = tmp_path / "shared"
    extra = ("hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=2", "trainer.epochs=1")
    command = sweep_command(
        tiny_mnist, override, *extra, f"hydra.sweep.dir={shared}", f"hydra/launcher={launcher}"
    )
    workers = [start_worker(command, tmp_path, f"worker{i}.log") for i in range(2)]
    codes = [finish(worker) for worker in workers]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    done = [t for t in load().trials if t.state.is_finished()]
    assert 8 <= len(done) <= 8 + 1 and all(t.state == TrialState.COMPLETE for t in done)  # not a batch over
    assert len({t.user_attrs["worker"] for t in done}) == 2, "both workers ran trials"
    run_dirs = [tmp_path / t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == len(run_dirs) and {d.parent for d in run_dirs} == {shared}
    for trial, run_dir in zip(done, run_dirs, strict=True):
        assert read_json(run_dir / "metrics.json")["val_acc"] == trial.value
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert f"- scheduler.gamma={trial.params['scheduler.gamma']}\n" in overrides  # this trial's run
        assert len((run_dir / "train.log").read_text().split("epoch 1/1")) == 2  # one run's epoch
    assert sorted(p for p in shared.iterdir() if p.is_dir()) == sorted(run_dirs)  # no empty one left
