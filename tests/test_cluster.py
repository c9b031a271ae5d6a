"""Trials and sweep workers as cluster jobs, on a real one-node SLURM cluster started for these tests
(tests/helpers/slurm.py), and as submitit's local subprocesses; threads sized from what a job was given."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers.cli import REPO, cli_env, read_json, run_cli, tiny_data_overrides
from helpers.sweeps import (
    MEDIAN_PRUNER,
    PRUNING_SWEEP,
    check_pruned_trials,
    optuna_sweep_args,
    run_pruning_sweep,
)
from helpers.workers import check_study_finished_together, sweep_command

from src.hardware import cpus_given

# Real servers, several processes, long trials: the slow tier (make test-all; CI runs it).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm():
    from helpers.slurm import start_slurm

    cluster = start_slurm()
    yield cluster
    cluster.stop()


def sweep_on_slurm(slurm, args: list[str]) -> subprocess.CompletedProcess:
    """`python -m src.train ARGS` as a user on the cluster's login node types it."""
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**cli_env(), "SLURM_CONF": str(slurm.conf)},
    )


def start_sweep_on_slurm(slurm, args: list[str], tmp_path: Path) -> subprocess.Popen:
    """The same, in the background, its output in tmp_path/sweep.stdout and sweep.stderr."""
    with (tmp_path / "sweep.stdout").open("w") as stdout, (tmp_path / "sweep.stderr").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "src.train", *args],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
            env={**cli_env(), "SLURM_CONF": str(slurm.conf)},
        )


def threads_logged(run_dir: Path) -> int:
    return int(re.search(r"(\d+) threads", (run_dir / "train.log").read_text()).group(1))


def test_submitit_local_jobs_report_every_epoch_and_get_pruned(tiny_mnist, tmp_path):
    run_pruning_sweep(
        tiny_mnist, tmp_path, "sweep", "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=3"
    )
    check_pruned_trials(tmp_path, "sweep")
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))  # the jobs ran as submitit's


def test_an_optuna_sweep_runs_its_trials_as_slurm_jobs_that_report_and_get_pruned(
    slurm, tiny_mnist, tmp_path
):
    args = optuna_sweep_args(
        tiny_mnist,
        tmp_path,
        "sweep",
        *PRUNING_SWEEP,
        *MEDIAN_PRUNER,
        "hydra/launcher=slurm",
        "hydra.sweeper.n_jobs=2",
    )
    result = sweep_on_slurm(slurm, args)
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = check_pruned_trials(tmp_path, "sweep")
    study = optuna.load_study(study_name="steplr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 6 and len(pruned) >= 1
    job_logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 6  # one SLURM job (array task) per trial
    for trial in study.trials:  # each job sized its threads from its allocation (1 CPU), not the node's
        assert threads_logged(Path(trial.user_attrs["run_dir"])) == 1


def test_a_batch_slurm_refuses_ends_the_sweep_in_one_line_and_the_same_command_resumes_it(
    slurm, tiny_mnist, tmp_path
):
    """sbatch refusing the array (here a partition the cluster lacks) ended the sweep with submitit's
    traceback, and its trials said the sweep had been stopped while they ran."""
    args = optuna_sweep_args(
        tiny_mnist, tmp_path, "sweep", "trainer.epochs=1", "hydra.sweeper.n_trials=2", "hydra/launcher=slurm"
    )
    command = [sys.executable, "-m", "src.train", *args, "hydra.sweeper.n_jobs=2"]
    env = {**cli_env(), "SLURM_CONF": str(slurm.conf)}
    refused = subprocess.run(
        [*command, "hydra.launcher.partition=nope"], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    failure = "hydra/launcher=slurm failed: FailedJobError: sbatch: error: invalid partition specified: nope"
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {failure}; its trials are queued again: run the same command to resume"
    )
    study = optuna.load_study(study_name="steplr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [(t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials[:2]] == [
        ("FAIL", failure)
    ] * 2
    assert [t.state.name for t in study.trials[2:]] == ["WAITING"] * 2
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(study_name="steplr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials[2:]] == ["COMPLETE"] * 2


def test_ctrl_c_on_a_sweep_cancels_its_batchs_slurm_jobs_which_end_as_interrupted(
    slurm, tiny_mnist, tmp_path
):
    """submitit left the batch's array in SLURM when the sweep was stopped: its running jobs failed at their
    next report, and pending ones started later, for trials the study had already queued again."""
    args = optuna_sweep_args(
        tiny_mnist,
        tmp_path,
        "sweep",
        "trainer.epochs=500",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=3",
        "hydra/launcher=slurm",
        "hydra.launcher.array_parallelism=2",  # the third waits in SLURM's queue
    )
    sweep = start_sweep_on_slurm(slurm, args, tmp_path)
    deadline = time.monotonic() + 600
    started = [tmp_path / "sweep" / str(n) / "metrics.csv" for n in range(2)]
    while not all(path.exists() and len(path.read_text().splitlines()) > 2 for path in started):
        assert time.monotonic() < deadline and sweep.poll() is None, "the jobs never trained"
        time.sleep(0.5)
    assert len(slurm.queue()) == 3  # two running, one pending
    os.kill(sweep.pid, signal.SIGINT)
    assert sweep.wait(120) == -signal.SIGINT
    stderr = (tmp_path / "sweep.stderr").read_text()
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == "interrupted (Ctrl-C)", stderr[-3000:]
    deadline = time.monotonic() + 60  # scancel's SIGTERM: each job writes its run's files and ends
    while slurm.queue():
        assert time.monotonic() < deadline, f"jobs left in SLURM: {slurm.queue()}"
        time.sleep(0.5)
    assert "Cancelled the batch's SLURM jobs" in (tmp_path / "sweep.stdout").read_text()
    for path in started:  # each ran to the end of its run, on SLURM's SIGTERM
        summary = read_json(path.parent / "metrics.json")
        assert summary["status"] == "interrupted" and 2 <= summary["epochs_completed"] < 500
    # the pending one never started
    assert not list((tmp_path / "sweep" / ".submitit").glob("*_2/*_log.out"))
    assert not list((tmp_path / "sweep" / "2").iterdir())
    study = optuna.load_study(study_name="steplr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3 + ["WAITING"] * 3  # queued again


@pytest.mark.parametrize(
    ("launcher", "minutes", "delay"), [("slurm", 1, 90), ("submitit_slurm", 2, 120)]
)  # ours signals 30 s before the limit (as set here: 90), submitit's own 120 s
def test_a_slurm_time_limit_within_submitits_signal_delay_is_refused_in_one_line(
    tiny_mnist, tmp_path, launcher, minutes, delay
):
    """submitit signals a job signal_delay_s before its time limit and the job fails there: with
    `timeout_min=1` under submitit's 120 s, every trial failed as it started ("timed-out too many times")."""
    args = optuna_sweep_args(
        tiny_mnist,
        tmp_path,
        "sweep",
        f"hydra/launcher={launcher}",
        f"hydra.launcher.timeout_min={minutes}",
        f"hydra.launcher.signal_delay_s={delay}",
    )
    result = run_cli("src.train", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: hydra.launcher.timeout_min={minutes} is not allowed: more than "
        f"hydra.launcher.signal_delay_s={delay} seconds (submitit ends a job that long before its time "
        "limit: every trial would fail as it starts)"
    ]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "optuna.db").exists()


def test_a_trial_that_reaches_its_slurm_time_limit_fails_with_its_files_written(slurm, tiny_mnist, tmp_path):
    args = optuna_sweep_args(
        tiny_mnist,
        tmp_path,
        "sweep",
        "trainer.epochs=100000",
        "hydra.sweeper.n_trials=1",
        "hydra/launcher=slurm",
        # signalled 30 s before its limit, and SLURM may send that up to a minute early: after 30 to 90 s
        "hydra.launcher.timeout_min=2",
    )
    result = sweep_on_slurm(slurm, args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = read_json(tmp_path / "sweep" / "0" / "metrics.json")
    reason = (
        "TimeLimitReached: the job's SLURM time limit (hydra.launcher.timeout_min) is about to end it: "
        "submitit stopped it hydra.launcher.signal_delay_s before"
    )  # submitit's words were "UncompletedJobError: Job not requeued because: timed-out too many times."
    assert summary["status"] == "failed" and summary["reason"] == reason
    assert 1 <= summary["epochs_completed"] < 100000
    (trial,) = optuna.load_study(study_name="steplr", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["fail_reason"] == reason


def test_a_job_slurm_cannot_start_is_named_in_a_warning_and_ctrl_c_cancels_it(slurm, tiny_mnist, tmp_path):
    """More CPUs per task than the node has: sbatch takes the array and SLURM keeps it pending for good
    (`PartitionConfig`), and the sweep used to wait without a word."""
    args = optuna_sweep_args(
        tiny_mnist,
        tmp_path,
        "sweep",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=slurm",
        f"hydra.launcher.cpus_per_task={(os.cpu_count() or 1) * 8}",
    )
    sweep = start_sweep_on_slurm(slurm, args, tmp_path)
    deadline = time.monotonic() + 120
    while "SLURM keeps job" not in (tmp_path / "sweep.stdout").read_text():
        assert time.monotonic() < deadline and sweep.poll() is None, (tmp_path / "sweep.stdout").read_text()
        time.sleep(0.5)
    (warning,) = [
        line for line in (tmp_path / "sweep.stdout").read_text().splitlines() if "SLURM keeps" in line
    ]
    assert re.search(
        r"SLURM keeps job \d+_0, \d+_1 pending: PartitionConfig, which does not pass by itself", warning
    )
    sweep.send_signal(signal.SIGINT)
    assert sweep.wait(120) == -signal.SIGINT
    assert not slurm.queue()


def test_the_arrays_to_cancel_are_those_whose_task_folders_appeared_during_the_launch(tmp_path):
    from hydra_plugins.optuna_pruning_sweeper.slurm_launcher import submitted_arrays

    for name in ("7_0", "7_1", "7"):  # an earlier batch's array
        (tmp_path / name).mkdir()
    before = {path.name for path in tmp_path.iterdir()}
    for name in ("12_0", "12_1", "12", "13_0"):
        (tmp_path / name).mkdir()
    (tmp_path / "14_0_submitted.pkl").touch()  # submitit's files in one folder
    (tmp_path / "notes").mkdir()
    assert submitted_arrays(tmp_path, before) == ["12", "13", "14"]
    assert submitted_arrays(tmp_path / "missing", set()) == []


def test_sweep_workers_submitted_as_slurm_jobs_finish_one_study(slurm, tiny_mnist, tmp_path):
    command = sweep_command(
        tiny_mnist, f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.n_trials=4"
    )
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            "--cpus-per-task=1",
            "--mem=2G",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/worker-%a.log",
            f"--wrap={shlex.join(command)}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**cli_env(), "SLURM_CONF": str(slurm.conf)},
    )
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 600
    while job in " ".join(slurm.queue()) and time.monotonic() < deadline:
        time.sleep(0.5)
    logs = [path.read_text() for path in sorted(tmp_path.glob("worker-*.log"))]
    assert len(logs) == 2 and not [log for log in logs if "Traceback" in log], "\n".join(logs)[-3000:]
    trials = optuna.load_study(study_name="steplr", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    check_study_finished_together(trials, 4, 2, tmp_path)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert {threads_logged(tmp_path / t.user_attrs["run_dir"]) for t in trials} == {1}


def test_a_sweep_worker_cancelled_in_slurm_ends_its_trial_as_interrupted_and_queues_it_again(
    slurm, tiny_mnist, tmp_path
):
    """scancel (and a job's time limit) sends SIGTERM, then SIGKILL after KillWait. Before, SIGTERM ended the
    worker at once: its run had no metrics.json and its trial stayed RUNNING until another worker found it
    stale. Now the worker ends as on Ctrl-C."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = sweep_command(
        tiny_mnist,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=2",
        "trainer.epochs=500",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    env = {**cli_env(), "SLURM_CONF": str(slurm.conf)}
    job = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=2G", f"--chdir={tmp_path}",
         f"--output={tmp_path}/worker.log", f"--wrap={shlex.join(command)}"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.strip()  # fmt: skip
    run_dir = tmp_path / "sweep" / "0"
    deadline = time.monotonic() + 600
    while not (
        (run_dir / "metrics.csv").exists() and len((run_dir / "metrics.csv").read_text().splitlines()) > 2
    ):
        assert time.monotonic() < deadline and job in " ".join(slurm.queue()), "the job never trained"
        time.sleep(0.5)
    subprocess.run(["scancel", job], check=True, env=env)
    while job in " ".join(slurm.queue()):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    log = (tmp_path / "worker.log").read_text()
    assert log.splitlines()[-1] == "interrupted (SIGTERM)" and "Traceback" not in log, log[-3000:]
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "interrupted" and 2 <= metrics["epochs_completed"] < 500
    trials = optuna.load_study(study_name="steplr", storage=storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL and trials[0].user_attrs["interrupted"]
    queued = trials[1]  # its parameters, to run again
    assert (
        queued.state == optuna.trial.TrialState.WAITING
        and queued.system_attrs["fixed_params"] == trials[0].params
    )


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to give a run fewer than all")
def test_a_run_sizes_its_threads_from_its_cpu_affinity(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a CPU-share registry of its own: no other job counts
    result = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "src.train",
            f"hydra.run.dir={tmp_path / 'run'}",
            *tiny_data_overrides(tiny_mnist),
            "trainer.epochs=1",
            "logger=none",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert threads_logged(tmp_path / "run") == 1
    unrestricted = run_cli("src.train", f"hydra.run.dir={tmp_path / 'all'}", *tiny_data_overrides(tiny_mnist))
    assert unrestricted.returncode == 0 and threads_logged(tmp_path / "all") == len(os.sched_getaffinity(0))


def test_slurm_cpus_per_task_caps_the_cpus_a_job_uses(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpus_given() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert cpus_given() == len(os.sched_getaffinity(0))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to share")
def test_a_run_started_beside_another_training_job_takes_its_share_of_the_cpus(
    tiny_mnist, tmp_path, monkeypatch
):
    """Two sweep workers on one machine used to run a thread per core each: 4 threads on 2 cores. The two
    runs keep their registry in a temporary directory of their own (TMPDIR), so that training jobs of
    anyone else on the machine do not count."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    busy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.train",
            f"hydra.run.dir={tmp_path / 'busy'}",
            *tiny_data_overrides(tiny_mnist),
            "trainer.epochs=500",
            "trainer.batch_size=8",
            "logger=none",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "busy" / "metrics.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        beside = run_cli(
            "src.train", f"hydra.run.dir={tmp_path / 'beside'}", *tiny_data_overrides(tiny_mnist)
        )
        assert beside.returncode == 0, beside.stderr[-2000:]
    finally:
        busy.kill()
        busy.wait()
    assert threads_logged(tmp_path / "busy") == len(os.sched_getaffinity(0))
    assert threads_logged(tmp_path / "beside") == len(os.sched_getaffinity(0)) // 2


def test_the_cpu_share_counts_live_jobs_on_overlapping_cpus_and_forgets_dead_ones(tmp_path, monkeypatch):
    from src import cpu_share

    monkeypatch.setattr(cpu_share, "REGISTRY", tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"{dead.pid}.1").write_text("0,1")  # a job that ended without leaving
    # live jobs (not this process's ancestors): one on CPU 0, one on other CPUs
    others = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        for other, cpus in zip(others, ("0", "7"), strict=True):
            (tmp_path / f"{other.pid}.{cpu_share.process_start_time(other.pid)}").write_text(cpus)
        # this process's parent: the sweep whose launch process this would be (it trains for it)
        (tmp_path / f"{os.getppid()}.{cpu_share.process_start_time(os.getppid())}").write_text("0,1")
        share = cpu_share.CpuShare(frozenset({0, 1}))
        share.register()
        assert share.entry.read_text() == "0,1"
        assert share.jobs_sharing_my_cpus() == 2  # this job and the other one on CPU 0
    finally:
        for other in others:
            other.kill()
            other.wait()
    assert not (tmp_path / f"{dead.pid}.1").exists()
