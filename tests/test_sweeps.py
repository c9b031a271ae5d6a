"""Sweeps through the real CLI on the tiny MNIST: Optuna study, plain grid, resume, failures, joblib."""

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
import yaml
from helpers.cli import REPO, cli_env, files_of, read_json, run_cli, tiny_data_overrides
from helpers.sweeps import STUDY, composed, load_study, optuna_sweep_args, trial_dirs
from optuna.trial import TrialState

from hydra_plugins.optuna_pruning_sweeper.processes import process_start_time
from hydra_plugins.optuna_pruning_sweeper.sweep_owner import STUDY_FILE


def test_optuna_sweep_writes_a_directory_per_trial_and_a_persistent_study(tiny_mnist, tmp_path):
    result = run_cli(
        "src.train",
        *optuna_sweep_args(
            tiny_mnist,
            tmp_path,
            "sweep",
            "hydra.sweeper.n_trials=3",
            "trainer.epochs=1",
            "hydra.sweeper.params.scheduler.gamma='interval(0.1, 0.9)'",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    dirs = trial_dirs(sweep_dir)
    assert len(dirs) == 3
    study = load_study(tmp_path)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and len(study.trials) == 3
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        cfg = composed(run_dir)
        assert cfg["scheduler"]["step_size"] == trial.params["scheduler.step_size"]
        assert cfg["scheduler"]["gamma"] == pytest.approx(trial.params["scheduler.gamma"])
        assert 1 <= cfg["scheduler"]["step_size"] <= cfg["trainer"]["epochs"]
        assert 0.1 <= cfg["scheduler"]["gamma"] <= 0.9
        metrics = read_json(run_dir / "metrics.json")
        assert metrics["status"] == "completed"
        assert trial.value == metrics["val_acc"]  # the study optimizes validation, never test accuracy
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == study.best_value and results["best_params"] == study.best_params
    assert results["trials"] == {"complete": 3, "pruned": 0, "fail": 0}
    assert "3 completed, 0 pruned, 0 failed" in result.stdout + result.stderr
    assert f"directory {study.best_trial.user_attrs['run_dir']}" in result.stdout + result.stderr


def test_plain_hydra_grid_runs_every_combination(tiny_mnist, tmp_path):
    result = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'grid'}",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=1",
        "logger=none",
        "scheduler.gamma=0.1,0.5,0.9",
        "scheduler.step_size=1,2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = trial_dirs(tmp_path / "grid")
    assert len(dirs) == 6
    pairs = {(composed(d)["scheduler"]["gamma"], composed(d)["scheduler"]["step_size"]) for d in dirs}
    assert pairs == {(g, s) for g in (0.1, 0.5, 0.9) for s in (1, 2)}
    assert all(read_json(d / "metrics.json")["status"] == "completed" for d in dirs)


def test_grid_sampler_with_a_diverging_trial_records_the_failure_and_goes_on(tiny_mnist, tmp_path):
    # An MLP under SGD with lr=1000 produces a NaN loss within a few batches.
    result = run_cli(
        "src.train",
        *optuna_sweep_args(
            tiny_mnist,
            tmp_path,
            "sweep",
            "hydra/sweeper/sampler=grid",
            "model=mlp",
            "optimizer=sgd",
            "trainer.epochs=1",
            "optimizer.lr=choice(0.01,0.02,0.05,1000)",
            "scheduler.gamma=0.5",
            "scheduler.step_size=1",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert failed.params["optimizer.lr"] == 1000
    assert "nan" in failed.user_attrs["fail_reason"]
    metrics = read_json(Path(failed.user_attrs["run_dir"]) / "metrics.json")
    assert metrics["status"] == "failed" and "diverged" in metrics["reason"]
    assert "3 completed, 0 pruned, 1 failed" in result.stdout + result.stderr


def test_too_many_failures_end_the_sweep_with_a_clear_error(tiny_mnist, tmp_path):
    result = run_cli(
        "src.train",
        *optuna_sweep_args(
            tiny_mnist,
            tmp_path,
            "sweep",
            "hydra.sweeper.n_trials=4",
            "model=mlp",
            "optimizer=sgd",
            "optimizer.lr=1000",
            "trainer.epochs=1",
            "hydra.sweeper.max_failure_rate=0.25",
        ),
    )
    assert result.returncode != 0
    assert "trials failed, more than hydra.sweeper.max_failure_rate=0.25 x n_trials=4" in result.stderr
    assert len(load_study(tmp_path).get_trials(states=(TrialState.FAIL,))) == 2


def test_a_study_without_a_name_says_which_name_resumes_it_and_that_name_does(tiny_mnist, tmp_path):
    """hydra.sweeper.study_name=null: Optuna makes up a name, and the same command would start another study
    each time; the sweep names the study and the override that resumes it."""
    common = ["hydra.sweeper.n_trials=2", "trainer.epochs=1", "logger=none"]
    first = run_cli(
        "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "a", *common, "hydra.sweeper.study_name=null")
    )
    assert first.returncode == 0, first.stderr[-2000:]
    said = re.search(
        r"to resume or extend it, add (hydra\.sweeper\.study_name=(\S+)) to the command",
        first.stdout + first.stderr,
    )
    assert said is not None, first.stderr[-2000:]
    assert said.group(2).startswith("no-name-")
    more = run_cli(
        "src.train",
        *optuna_sweep_args(tiny_mnist, tmp_path, "b", *common[1:], "hydra.sweeper.n_trials=3", said.group(1)),
    )
    assert more.returncode == 0, more.stderr[-2000:]
    assert f"Study '{said.group(2)}' holds 2 finished trials: 1 to go" in more.stdout + more.stderr
    assert "study_name=null" not in more.stdout + more.stderr
    study = optuna.load_study(study_name=said.group(2), storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3


def test_killed_sweep_resumes_without_losing_or_repeating_finished_trials(tiny_mnist, tmp_path):
    args = [
        sys.executable,
        "-m",
        "src.train",
        *optuna_sweep_args(
            tiny_mnist,
            tmp_path,
            "first",
            "hydra.sweeper.n_trials=6",
            # Long enough trials, none of whose epochs come from another trial, so that the kill lands
            # inside trial 2.
            "trainer.epochs=20",
            "trainer.prefix_cache=null",
            "logger=none",
        ),
    ]
    first = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    third = tmp_path / "first" / "2"
    while time.monotonic() < deadline:  # kill once two trials finished, with the third one running
        finished = [d for d in (tmp_path / "first").glob("[0-9]*") if (d / "metrics.json").exists()]
        if len(finished) >= 2 and (third / "metrics.csv").exists() and not (third / "metrics.json").exists():
            break
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {t.number: t for t in load_study(tmp_path).trials}
    completed_before = {n: t.value for n, t in before.items() if t.state == TrialState.COMPLETE}
    running_before = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert len(completed_before) >= 2 and running_before

    # The same command; only the sweep directory differs (given last, it wins), as a rerun gets a new one.
    resumed = run_cli("src.train", *args[3:], f"hydra.sweep.dir={tmp_path / 'second'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = load_study(tmp_path).trials
    assert not [t for t in after if t.state == TrialState.RUNNING]
    for number, value in completed_before.items():  # kept, and not re-run
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    for number in running_before:  # the trial the kill interrupted: failed, flagged, its parameters re-run
        assert after[number].state == TrialState.FAIL and after[number].user_attrs["interrupted"]
        assert any(
            t.params == after[number].params and t.state == TrialState.COMPLETE for t in after[number:]
        )
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    proposed = [tuple(t.params.items()) for t in complete if "retry_of" not in t.user_attrs]
    assert len(set(proposed)) == len(proposed)  # the resumed sampler did not repeat the killed sweep's draws
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == 6
    assert len(trial_dirs(tmp_path / "second")) == 6 - len(completed_before)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_killed_sweep_keeps_the_trials_whose_jobs_ended_before_it_told_the_study(
    tiny_mnist, tmp_path, stop
):
    """With n_jobs=2 the sweep tells the study after both jobs of a batch. Killed in the second job, the
    first job's trial was still RUNNING: the resumed sweep takes the outcome that job recorded on it
    instead of training it again. Before, it failed the trial as interrupted and trained it once more.
    Stopped by Ctrl-C, the sweep takes that outcome itself as it fails the interrupted trial."""
    extra = ("hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "trainer.epochs=300", "logger=none")
    args = [sys.executable, "-m", "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "first", *extra)]
    first = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    done, running = tmp_path / "first" / "0", tmp_path / "first" / "1"
    deadline = time.monotonic() + 300
    while not ((done / "metrics.json").exists() and (running / "metrics.csv").exists()):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    os.killpg(first.pid, stop)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == -stop
    if stop == signal.SIGKILL:
        assert not (running / "metrics.json").exists()
        assert [t.state for t in load_study(tmp_path).trials] == [TrialState.RUNNING] * 2
    else:
        assert read_json(running / "metrics.json")["status"] == "interrupted"
        states = [t.state for t in load_study(tmp_path).trials]
        assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]  # trial 1 queued again
        assert "Trial 0 completed with" in output and "as its job recorded" in output

    resumed = run_cli("src.train", *args[3:], f"hydra.sweep.dir={tmp_path / 'second'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = load_study(tmp_path).trials
    assert (
        after[0].state == TrialState.COMPLETE
        and after[0].value == read_json(done / "metrics.json")["val_acc"]
    )
    if stop == signal.SIGKILL:
        assert f"Trial 0 completed with {after[0].value:g}, as its job recorded" in resumed.stdout
    assert after[1].state == TrialState.FAIL and after[1].user_attrs["interrupted"]
    assert len(after) == 3 and after[2].state == TrialState.COMPLETE and after[2].params == after[1].params
    assert [p.name for p in trial_dirs(tmp_path / "second")] == ["0"]  # the interrupted trial's rerun only


def test_ctrl_c_in_a_batch_keeps_the_run_it_stopped_and_no_directory_of_the_jobs_that_never_started(
    tiny_mnist, tmp_path
):
    """A batch claims its jobs' directories before they run (job_dirs.py); Ctrl-C in its first job gives
    back those of the jobs that never started, so no empty run directory is left for compare to warn of."""
    extra = ("hydra.sweeper.n_jobs=3", "trainer.epochs=20", "trainer.prefix_cache=null", "logger=none")
    args = [sys.executable, "-m", "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", *extra)]
    sweep = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first = tmp_path / "sweep" / "0"
    deadline = time.monotonic() + 300
    while not (first / "metrics.csv").exists():  # the first job of the batch has trained an epoch
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.05)
    assert sorted(p.name for p in trial_dirs(tmp_path / "sweep")) == ["0", "1", "2"]  # claimed
    os.killpg(sweep.pid, signal.SIGINT)
    assert sweep.wait(120) == -signal.SIGINT
    assert read_json(first / "metrics.json")["status"] == "interrupted"
    assert trial_dirs(tmp_path / "sweep") == [first]


def test_joblib_launcher_runs_two_workers_with_the_cores_shared(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a CPU-share registry of its own: no other job counts
    result = run_cli(
        "src.train",
        *optuna_sweep_args(
            tiny_mnist,
            tmp_path,
            "sweep",
            "hydra/launcher=joblib",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.n_trials=4",
            "trainer.epochs=1",
            "logger=none",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    expected_threads = max(1, (os.cpu_count() or 1) // 2)
    for run_dir in trial_dirs(tmp_path / "sweep"):
        assert f"{expected_threads} threads" in (run_dir / "train.log").read_text()
    assert "Joblib.Parallel" in result.stdout + result.stderr


def test_search_space_may_be_nested_or_flat_with_interpolations_resolved():
    from omegaconf import OmegaConf

    from hydra_plugins.optuna_pruning_sweeper.sweeper import search_space_overrides

    cfg = OmegaConf.create(
        {
            "epochs": 4,
            "nested": {
                "scheduler": {"step_size": "int(interval(1, ${epochs}))", "gamma": "interval(0.1, 0.9)"}
            },
            "flat": {
                "scheduler.step_size": "int(interval(1, ${epochs}))",
                "scheduler.gamma": "interval(0.1, 0.9)",
            },
        }
    )
    expected = ["scheduler.step_size=int(interval(1, 4))", "scheduler.gamma=interval(0.1, 0.9)"]
    assert search_space_overrides(cfg.nested) == search_space_overrides(cfg.flat) == expected
    assert search_space_overrides(None) == []


def test_rerunning_a_finished_study_runs_nothing_and_another_sweep_is_refused(tiny_mnist, tmp_path):
    first = run_cli(
        "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "first", "hydra.sweeper.n_trials=2")
    )
    assert first.returncode == 0, first.stderr[-3000:]
    trials = [(t.number, t.state, t.params, t.value) for t in load_study(tmp_path).trials]

    again = run_cli(
        "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "again", "hydra.sweeper.n_trials=2")
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 completed, 0 pruned, 0 failed" in again.stdout + again.stderr
    assert not trial_dirs(tmp_path / "again")
    results = yaml.safe_load((tmp_path / "again" / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(t[3] for t in trials)

    for other in (["optimizer=sgd"], ["hydra.sweeper.params.scheduler.gamma='interval(0.1, 0.9)'"]):
        refused = run_cli(
            "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "other", "hydra.sweeper.n_trials=3", *other)
        )
        assert refused.returncode != 0
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr
        assert "other settings" in errors[0] and "hydra.sweeper.study_name" in errors[0]
        assert ("optimizer=sgd" if other == ["optimizer=sgd"] else "scheduler.gamma") in errors[0]
        assert not (tmp_path / "other").exists()  # refused before its sweep directory was made
    assert [(t.number, t.state, t.params, t.value) for t in load_study(tmp_path).trials] == trials


def test_a_sweep_of_another_study_is_refused_the_sweep_directory_of_a_study_and_changes_nothing(
    tiny_mnist, tmp_path
):
    """Workers of one study share a sweep directory; a sweep of another study (another name, or the same
    name in another storage) would mix its runs with the first's and replace its optimization_results.yaml."""
    first = run_cli(
        "src.train",
        *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=2", "logger=none"),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    before = files_of(tmp_path / "sweep")
    assert yaml.safe_load(before[STUDY_FILE]) == {
        "study_name": STUDY,
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
    }
    other_storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'other.db'}"
    for other in ("hydra.sweeper.study_name=other", other_storage):
        refused = run_cli(
            "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=2", other)
        )
        assert refused.returncode != 0
        assert refused.stderr.strip().splitlines() == [
            line for line in refused.stderr.splitlines() if line.startswith("error:")
        ]
        assert f"holds the runs of study '{STUDY}' in sqlite:///{tmp_path / 'optuna.db'}" in refused.stderr
        assert files_of(tmp_path / "sweep") == before
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}") == [STUDY]  # none made

    # A directory of an older sweep, without the study file, is recognised by its results.
    (tmp_path / "sweep" / STUDY_FILE).unlink()
    refused = run_cli(
        "src.train",
        *optuna_sweep_args(
            tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=b"
        ),
    )
    assert refused.returncode != 0 and f"holds the runs of study '{STUDY}'" in refused.stderr

    more = run_cli(
        "src.train",
        *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=3", "logger=none"),
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(trial_dirs(tmp_path / "sweep")) == 3
    assert (tmp_path / "sweep" / STUDY_FILE).is_file()


def readme_sweep_commands() -> list[str]:
    """The README's `python -m src.train --multirun hparams_search=...` lines, continuations joined."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    return [
        line.split("  #")[0].strip()
        for line in text.splitlines()
        if line.startswith("python -m src.train --multirun hparams_search=steplr_optuna")
    ]


# Each README search-space line (found by its study name) and what its trials' parameters must satisfy.
README_SEARCH_SPACES = {
    "narrow": lambda params: 0.1 <= params["scheduler.gamma"] <= 0.9,
    "grid": lambda params: (
        params["scheduler.gamma"] in (0.1, 0.3, 0.5, 0.9) and params["scheduler.step_size"] in (1, 2, 3)
    ),
    "lr": lambda params: 1e-4 <= params["optimizer.lr"] <= 1e-2,
}


@pytest.mark.parametrize("study_name", README_SEARCH_SPACES)
def test_readme_search_space_commands_run_as_typed_in_a_shell(tiny_mnist, tmp_path, study_name):
    command = next(c for c in readme_sweep_commands() if f"study_name={study_name} " in c)
    extra = optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=2", "trainer.epochs=1")[
        2:
    ]
    result = subprocess.run(
        ["bash", "-c", f"{command} {shlex.join(extra)}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert all(README_SEARCH_SPACES[study_name](trial.params) for trial in study.trials)


def test_the_lr_preset_searches_lr0_in_a_study_of_its_own(tiny_mnist, tmp_path):
    args = optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=3", "trainer.epochs=1")
    args[1] = "hparams_search=steplr_lr_optuna"
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="steplr_lr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    for trial in study.trials:
        assert set(trial.params) == {"scheduler.step_size", "scheduler.gamma", "optimizer.lr"}
        assert 1e-4 <= trial.params["optimizer.lr"] <= 0.1
        assert composed(Path(trial.user_attrs["run_dir"]))["optimizer"]["lr"] == pytest.approx(
            trial.params["optimizer.lr"]
        )
    assert not (tmp_path / "sweep" / ".prefix_cache").exists()  # no trial could reuse another's epochs


def test_a_bad_fixed_value_stops_a_plain_grid_before_any_job(tiny_mnist, tmp_path):
    result = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'grid'}",
        *tiny_data_overrides(tiny_mnist),
        "scheduler.gamma=0.1,0.5",
        "trainer.epochs=0",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: trainer.epochs=0 is not allowed: an integer >= 1"]
    assert not (tmp_path / "grid").exists()


GRID_VALUES_REFUSED = [
    (["scheduler.gamma=0.5,-1"], "scheduler.gamma=-1 is not allowed: a number in (0, 1]"),
    (["trainer.batch_size=range(-1,2)"], "trainer.batch_size=-1 is not allowed: an integer >= 1"),
    (["+trainer.foo=1,2"], "trainer.foo=1 is not allowed: not a trainer setting"),
    (["data.val_size=100,5000"], "data.val_size=5000 is not allowed: between 1 and 1199"),
    (["scheduler=step_lr,plateu"], "scheduler='plateu' is not allowed: one of constant, cosine"),
    # job 0 would train 0 epochs: a job's number is what `${hydra:job.num}` reads in each job's check
    (["optimizer.lr=0.1,0.2", "trainer.epochs=${hydra:job.num}"], "trainer.epochs=0 is not allowed"),
    (["optimizer.lr=0.1,0.2", "trainer.seed=${hydra.job.num}"], "trainer.seed='${hydra.job.num}' is not"),
    # two jobs into one directory: the second would replace the first's results, and the sweep end well
    (
        ["optimizer.lr=0.1,0.2", "scheduler.gamma=0.1,0.5", "hydra.sweep.subdir=gamma_${scheduler.gamma}"],
        "hydra.sweep.subdir='gamma_${scheduler.gamma}' gives job 2 (optimizer.lr=0.2) the directory of job 0 "
        "(optimizer.lr=0.1),",
    ),
]


@pytest.mark.parametrize(("sweep", "message"), GRID_VALUES_REFUSED)
@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_bad_value_of_a_plain_grid_stops_it_before_any_job(tiny_mnist, tmp_path, sweep, message, launcher):
    """Hydra's basic sweeper would run the other jobs, then end with the bad job's traceback (exit 1) and
    leave its directory without results; each job's values are checked first (src/grid_jobs.py)."""
    grid = ["--multirun", f"hydra.sweep.dir={tmp_path / 'grid'}", *tiny_data_overrides(tiny_mnist)]
    result = run_cli("src.train", *grid, "trainer.epochs=1", f"hydra/launcher={launcher}", *sweep)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "grid").exists()


def test_a_plain_grid_whose_every_job_is_valid_runs_though_its_swept_keys_defaults_are_not(
    tiny_mnist, tmp_path
):
    """A warmup of 6 epochs is fewer than each swept trainer.epochs (7, 8), not than the default 5 the
    sweep's own config holds: before, the grid was refused for that config, which no job runs."""
    grid = [
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'grid'}",
        *tiny_data_overrides(tiny_mnist),
        "logger=none",
    ]
    result = run_cli(
        "src.train", *grid, "scheduler=warmup_cosine", "steps.warmup_epochs=6", "trainer.epochs=7,8"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [read_json(tmp_path / "grid" / str(job) / "metrics.json") for job in (0, 1)]
    assert [run["epochs_completed"] for run in runs] == [7, 8]


def test_grid_jobs_are_checked_as_they_will_run_and_only_for_a_plain_grid_of_values(tiny_mnist):
    """Every job up to MAX_CHECKED_JOBS; beyond, each value of each key beside the first of the others.
    Values valid only together with another key's (a warmup shorter than every epochs value swept) are
    checked as the jobs pair them. A sweep over a config group, or another sweeper, is left to its jobs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from hydra_plugins.optuna_pruning_sweeper.job_dirs import shared_directory
    from src import conf_files
    from src.callbacks import check_machine_and_data
    from src.config import validate
    from src.errors import ConfigError, UserInputError
    from src.grid_jobs import MAX_CHECKED_JOBS, grid_jobs

    def jobs(*task: str, sweeper="basic", scheduler="step_lr", params=None, subdir=None) -> list[dict]:
        overrides = [*tiny_data_overrides(tiny_mnist), f"hydra/sweeper={sweeper}", f"scheduler={scheduler}"]
        with initialize_config_dir(config_dir=str(REPO / "conf")):
            config = compose("train", overrides, return_hydra_config=True)
        with read_write(config), open_dict(config):
            config.hydra.overrides.task = list(task)
            if params:  # the basic sweeper's own params (a config file sets them)
                config.hydra.sweeper.params = params
            if subdir:
                config.hydra.sweep.subdir = subdir
        HydraConfig.instance().set_config(config)  # as Hydra sets it for the sweep
        seen = []
        for job in grid_jobs(config):  # as the callback that checks the sweep's config first does
            validate(job.config)
            check_machine_and_data(job.config)
            trainer = job.config.trainer
            seen.append({"number": job.number, "epochs": trainer.epochs, "seed": trainer.seed})
            seen[-1] |= {"lr": job.config.optimizer.lr, "overrides": job.overrides}
        pairs = [(j["number"], j["overrides"]) for j in seen]
        if reason := shared_directory(config, pairs, conf_files.is_group, runs_there_count=False):
            raise UserInputError(reason)
        return seen

    small = jobs("trainer.epochs=1,2", "optimizer.lr=0.1,0.2,0.3")
    assert len(small) == 6 and len({tuple(j.values()) for j in small}) == 6
    # trainer.epochs is 5 in the sweep's config: a warmup of 6 epochs is valid with the 8 and 9 it runs with
    assert len(jobs("trainer.epochs=8,9", "steps.warmup_epochs=6,7", scheduler="warmup_cosine")) == 4
    with pytest.raises(ConfigError, match="steps.warmup_epochs=4 is not allowed"):
        jobs("trainer.epochs=3,6", "steps.warmup_epochs=2,4", scheduler="warmup_cosine")
    seeds = MAX_CHECKED_JOBS  # with 2 epochs values, more jobs than are checked one by one
    big = jobs("trainer.epochs=1,2", f"trainer.seed=range(0,{seeds})")
    assert len(big) == 1 + 1 + (seeds - 1)
    assert {j["seed"] for j in big} == set(range(seeds)) and {j["epochs"] for j in big} == {1, 2}
    # numbered as the basic sweeper numbers them: the last key varies fastest
    assert all(j["number"] == (j["epochs"] - 1) * seeds + j["seed"] for j in big)
    assert [j["number"] for j in small] == list(range(6))
    assert jobs("scheduler=step_lr,exponential_lr", "scheduler.gamma=0.1,0.2") == []
    assert jobs("scheduler.gamma=0.1,0.2", sweeper="optuna_pruning") == []
    assert jobs("trainer.epochs=3") == []  # no sweep
    assert small[1]["overrides"] == ("trainer.epochs=1", "optimizer.lr=0.2")  # as the basic sweeper writes
    by_both = jobs(
        "trainer.epochs=1,2", "optimizer.lr=0.1,0.2", subdir="e${trainer.epochs}_lr${optimizer.lr}"
    )
    assert len(by_both) == 4  # four directories
    with pytest.raises(
        UserInputError, match=r"job 1 \(optimizer.lr=0.2\) the directory of job 0 \(optimizer"
    ):
        jobs("trainer.epochs=1,2", "optimizer.lr=0.1,0.2", subdir="e${trainer.epochs}")
    assert len(jobs("trainer.epochs=1,2", params={"optimizer.lr": "0.1,0.2"})) == 4
    with pytest.raises(ConfigError, match=r"optimizer.lr=-1 is not allowed: a number > 0"):
        jobs(params={"optimizer.lr": "0.1,-1"})


def test_a_bad_fixed_value_stops_an_optuna_sweep_before_any_trial(tiny_mnist, tmp_path):
    """Every trial would fail the same way: one error line up front, and the study is left untouched,
    so the corrected command starts it cleanly."""
    args = optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=2", "trainer.epochs=1")
    result = run_cli("src.train", *args, "optimizer.lr=-1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: optimizer.lr=-1 is not allowed: a number > 0"]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "optuna.db").exists()
    result = run_cli("src.train", *args, "optimizer.lr=0.002")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [t.state for t in load_study(tmp_path).trials] == [TrialState.COMPLETE] * 2


def test_an_extended_study_continues_its_sampler_and_proposes_what_one_sweep_would(tiny_mnist, tmp_path):
    """n_trials=2, then the same command with n_trials=4: trials 2-3 are new points (the sampler goes on
    instead of starting again from its seed), and the 4 trials are exactly those of one n_trials=4 sweep."""

    def sweep(database: str, sweep_dir: str, n_trials: int) -> list[dict]:
        result = run_cli(
            "src.train",
            "--multirun",
            "hparams_search=steplr_optuna",
            f"hydra.sweep.dir={tmp_path / sweep_dir}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / database}",
            f"hydra.sweeper.n_trials={n_trials}",
            *tiny_data_overrides(tiny_mnist),
            "trainer.epochs=1",
            "logger=none",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / database}")
        return [t.params for t in study.trials]

    sweep("extended.db", "first", 2)
    extended = sweep("extended.db", "second", 4)
    assert len({tuple(p.items()) for p in extended}) == 4
    assert sweep("one_go.db", "one_go", 4) == extended


def test_runs_and_sweeps_started_in_the_same_second_never_share_a_directory(tiny_mnist, tmp_path):
    base = [
        sys.executable,
        "-m",
        "src.train",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=1",
        "logger=none",
    ]
    commands = [
        *([*base, f"scheduler.gamma={gamma}"] for gamma in (0.1, 0.9)),
        *([*base, "--multirun", f"scheduler.gamma={gamma},0.5"] for gamma in (0.2, 0.3)),
    ]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    assert [p.wait(600) for p in processes] == [0] * 4, [p.stderr.read()[-2000:] for p in processes]
    run_dirs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:  # each run's .hydra/ and metrics are its own
        gamma = composed(run_dir)["scheduler"]["gamma"]
        assert f"scheduler.gamma={gamma}" in read_json(run_dir / "metrics.json")["overrides"]
    sweep_dirs = sorted((tmp_path / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 2
    assert sorted(sorted(composed(d)["scheduler"]["gamma"] for d in trial_dirs(s)) for s in sweep_dirs) == [
        [0.2, 0.5],
        [0.3, 0.5],
    ]


BAD_SWEEPER_SETTINGS = [
    (
        "hydra.sweeper.study_name=''",
        "hydra.sweeper.study_name='' is not allowed: a name, or null (Optuna makes one up, and the same "
        "command starts another study)",
    ),
    (
        "hydra.sweeper.n_trial=3",
        "hydra.sweeper.n_trial=3 is not allowed: hydra/sweeper=optuna_pruning has no setting n_trial "
        "(did you mean hydra.sweeper.n_trials?)",
    ),
    (
        "hydra.sweeper.n_trials=abc",
        "hydra.sweeper.n_trials=abc is not allowed: Value 'abc' of type 'str' could not be converted to "
        "Integer",
    ),
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 is not allowed: an integer >= 1"),
    ("hydra.sweeper.n_jobs=-1", "hydra.sweeper.n_jobs=-1 is not allowed: an integer >= 1"),
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 is not allowed: an integer >= 1"),
    (
        "hydra.sweeper.max_failure_rate=-1",
        "hydra.sweeper.max_failure_rate=-1.0 is not allowed: a number in [0, 1]",
    ),
    (
        "hydra.sweeper.max_failure_rate=2",
        "hydra.sweeper.max_failure_rate=2.0 is not allowed: a number in [0, 1]",
    ),
    (
        "hydra.sweeper.grace_period=5",
        "hydra.sweeper.grace_period=5 is not allowed: an integer number of seconds > heartbeat_interval (10)",
    ),
    # The runs return one accuracy: minimize picked the worst run, and several directions failed every trial.
    *(
        (
            f"hydra.sweeper.direction={given}",
            f"hydra.sweeper.direction='{shown}' is not allowed: maximize (each run returns one value, "
            "optimized_metric=val_acc, an accuracy)",
        )
        for given, shown in (
            ("up", "up"),
            ("minimize", "minimize"),
            ("[maximize,maximize]", "[maximize, maximize]"),
        )
    ),
    (
        "hydra.sweeper.params.scheduler.gamma='interval(0.9,0.1)'",
        "hydra.sweeper.params.scheduler.gamma=interval(0.9,0.1) is not allowed: `low <= high` must hold, but "
        "got (low=0.9, high=0.1).",
    ),
    (
        "hydra.sweeper.params.scheduler.gamma='tag(log,interval(0,0.5))'",
        "hydra.sweeper.params.scheduler.gamma=tag(log,interval(0,0.5)) is not allowed: `low > 0` must hold "
        "for `log=True`, but got (low=0.0, high=0.5).",
    ),
    # The nested groups' settings: those of the pruner and sampler the preset (or the command line) chose.
    (
        "hydra.sweeper.pruner.n_startup_trials=3",
        "hydra.sweeper.pruner.n_startup_trials=3 is not allowed: hydra/sweeper/pruner=none has no setting "
        "n_startup_trials (it has none)",
    ),
    (
        "hydra.sweeper.sampler.seedx=3",
        "hydra.sweeper.sampler.seedx=3 is not allowed: hydra/sweeper/sampler=tpe has no setting seedx "
        "(did you mean hydra.sweeper.sampler.seed?)",
    ),
    (
        "hydra.sweeper.sampler.seed=abc",
        "hydra.sweeper.sampler.seed=abc is not allowed: Value 'abc' of type 'str' could not be converted to "
        "Integer",
    ),
    (
        "hydra.sweeper.sampler.seed=-1",
        "hydra.sweeper.sampler.seed=-1 is not allowed: null or an integer in [0, 4294967295] (numpy's seeds, "
        "which Optuna's samplers take)",
    ),
    (
        "hydra.sweeper.sampler.seed=4294967296",
        "hydra.sweeper.sampler.seed=4294967296 is not allowed: null or an integer in [0, 4294967295] "
        "(numpy's seeds, which Optuna's samplers take)",
    ),
    # The search space: a key the runs have, in the preset's space unless added with +, a quoted range.
    (
        "hydra.sweeper.params.scheduler.gama='interval(0.1,0.5)'",
        "hydra.sweeper.params.scheduler.gama='interval(0.1,0.5)' is not allowed: scheduler=step_lr has no "
        "key gama (did you mean scheduler.gamma?)",
    ),
    (
        "hydra.sweeper.params.trainer.epochs='range(1,3)'",
        "hydra.sweeper.params.trainer.epochs='range(1,3)' is not allowed: the search space of "
        "hparams_search=steplr_optuna has no trainer.epochs (search it with "
        "+hydra.sweeper.params.trainer.epochs='range(1,3)', or give trainer.epochs=RANGE directly)",
    ),
    (
        "hydra.sweeper.params.scheduler.gamma=interval(0.1,0.5)",
        "hydra.sweeper.params.scheduler.gamma=interval(0.1,0.5) is not allowed: quote the range for Hydra "
        "(hydra.sweeper.params.scheduler.gamma='interval(0.1,0.5)'), or give it directly "
        "(scheduler.gamma=interval(0.1,0.5))",
    ),
    (
        "hydra.sweeper.params.scheduler.gamma='intervl(0.1,0.5)'",
        "hydra.sweeper.params.scheduler.gamma=intervl(0.1,0.5) is not allowed: Unknown function 'intervl' "
        "(available: bool,choice,extend_list,float,glob,int,interval,json_str,range,shuffle,sort,str,tag)",
    ),
    (
        "scheduler.gamma=intervl(0.1,0.5)",
        "scheduler.gamma=intervl(0.1,0.5) is not allowed: Unknown function 'intervl' "
        "(available: bool,choice,extend_list,float,glob,int,interval,json_str,range,shuffle,sort,str,tag)",
    ),
    # Every trial failed at its first epoch with FileNotFoundError, and the sweep stopped on the failure rate
    (
        "trainer.prefix_cache=/etc/passwd/cache",
        "trainer.prefix_cache='/etc/passwd/cache' is not allowed: a directory that can be written "
        "(/etc/passwd is not a directory)",
    ),
    # A scheduler without the keys the preset searches: before, the study was opened, its first trials
    # failed with Hydra's five lines and were queued again, and the sweep ended with exit 1.
    (
        "scheduler=cosine",
        "hparams_search=steplr_optuna searches scheduler.step_size, which scheduler=cosine does not have "
        "(drop it from the search with ~hydra.sweeper.params.scheduler.step_size, or choose a scheduler that "
        "has it; hparams_search=schedule_families_optuna searches across them)",
    ),
    (
        "scheduler=plateau",
        "hparams_search=steplr_optuna searches scheduler.step_size, which scheduler=plateau does not have "
        "(drop it from the search with ~hydra.sweeper.params.scheduler.step_size, or choose a scheduler that "
        "has it; hparams_search=schedule_families_optuna searches across them)",
    ),
    # An option the search may draw that is not one: before, the study was opened and the sweep ended with
    # "hydra/launcher=basic failed: MissingConfigException" once it drew it.
    (
        "scheduler=choice(step_lr,step_lrr)",
        "scheduler='step_lrr' is not allowed: one of constant, cosine, cosine_restarts, cyclic, "
        "exponential_lr, multistep_lr, onecycle, plateau, step_lr, warmup_cosine (conf/scheduler/)",
    ),
    (
        "scheduler=choice(step_lr,cosine)",  # each option drawn must have what the preset searches
        "hparams_search=steplr_optuna searches scheduler.step_size, which scheduler=cosine does not have "
        "(drop it from the search with ~hydra.sweeper.params.scheduler.step_size, or choose a scheduler that "
        "has it; hparams_search=schedule_families_optuna searches across them)",
    ),
    (
        "hydra/sweeper/sampler=grid",
        "hydra/sweeper/sampler=grid is not allowed with a continuous range (scheduler.gamma): give each "
        "searched key choice(...) or range(...)",
    ),
    (
        "hydra/sweeper/sampler=motpe",
        "hydra/sweeper/sampler=motpe is not allowed: The 'motpe' sampler was removed in Optuna 4.0. Use "
        "'hydra/sweeper/sampler=tpe' instead. TPESampler now handles multi-objective optimization.",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_SWEEPER_SETTINGS)
def test_bad_sweeper_settings_stop_with_one_line_before_anything_is_written(
    tiny_mnist, tmp_path, override, message
):
    result = run_cli("src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", override))
    assert result.returncode == 2  # as for every bad input (Hydra exits 1 on a sweeper's error)
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: {message}"]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "optuna.db").exists()


def test_an_empty_directory_setting_or_a_subdir_every_job_shares_is_refused(tiny_mnist, tmp_path):
    """An empty directory (an unset shell variable) would write among the project's files, or look for the
    data there; a subdir without an interpolation, every job of the sweep into one directory, each
    overwriting the one before."""
    settings = [*tiny_data_overrides(tiny_mnist), "trainer.epochs=1", "logger=none"]
    sweep = ["--multirun", "scheduler.gamma=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    directory = "is not allowed: a directory (. for the current one)"
    shared = "is not allowed: a directory name that differs between the sweep's runs, through an "
    shared += "interpolation"
    refused = {
        ("hydra.run.dir=",): f"hydra.run.dir='' {directory}",
        ("data.root=",): f"data.root='' {directory}",
        (*sweep, "hydra.sweep.dir="): f"hydra.sweep.dir='' {directory}",
        (*sweep, "hydra.sweep.subdir=same"): f"hydra.sweep.subdir='same' {shared} (the default "
        "${hydra.job.num}, or e.g. seed_${trainer.seed})",
        (*sweep, "hydra.sweep.subdir="): f"hydra.sweep.subdir='' {shared}",
    }
    for arguments, message in refused.items():
        result = run_cli("src.train", *settings, *arguments, cwd=tmp_path)  # the last value of a key wins
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {message}"), line
    assert list(tmp_path.iterdir()) == []
    by_gamma = "hydra.sweep.subdir=gamma_${scheduler.gamma}"
    named = run_cli("src.train", *sweep, by_gamma, *settings, cwd=tmp_path)
    assert named.returncode == 0, named.stderr[-2000:]
    runs = sorted(path.parent.name for path in (tmp_path / "sweep").glob("*/metrics.json"))
    assert runs == ["gamma_0.1", "gamma_0.2"]


@pytest.mark.parametrize(("launcher", "n_jobs"), [("basic", 1), ("basic", 3), ("batched", 3)])
def test_an_optuna_sweep_stops_before_a_trial_would_write_into_another_ones_directory(
    tiny_mnist, tmp_path, launcher, n_jobs
):
    """With one epoch, step_size is always 1: every trial's subdir would be step_1, each replacing the
    one before while the study kept them all. One trial at a time, the second is stopped before it writes;
    in a batch, before any trial of the batch runs. The stopped trials are queued to run again."""
    subdir = "step_${scheduler.step_size}"
    args = optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "trainer.epochs=1", "logger=none")
    args += [f"hydra.sweep.subdir={subdir}", f"hydra/launcher={launcher}", f"hydra.sweeper.n_jobs={n_jobs}"]
    result = run_cli("src.train", *args, "hydra.sweeper.n_trials=3")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    step_1 = tmp_path / "sweep" / "step_1"
    allowed = "a name that differs between the jobs (the default is ${hydra.job.num})"
    gives = f"error: hydra.sweep.subdir='{subdir}' gives job 1"
    trials = load_study(tmp_path).trials
    ended = [t.state for t in trials if t.state != TrialState.WAITING]
    if n_jobs == 1:
        assert line == f"{gives} {step_1}, which holds another run: {allowed}"
        assert ended == [TrialState.COMPLETE, TrialState.FAIL]
        assert read_json(step_1 / "metrics.json")["status"] == "completed"  # trial 0's, as it wrote it
    else:
        # each job's value that differs from the other's: the gamma drawn
        assert line.startswith(f"{gives} (scheduler.gamma=") and line.endswith(f"), {step_1}: {allowed}")
        assert ") the directory of job 0 (scheduler.gamma=" in line
        assert ended == [TrialState.FAIL] * 3
        assert not step_1.exists()  # no trial of the batch ran
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.user_attrs["fail_reason"] for t in failed} == {line[len("error: ") :]}
    assert len(trials) - len(ended) == len(failed)  # each queued to run again


def test_a_plain_sweep_into_a_directory_with_runs_is_refused_unless_overwrite(tiny_mnist, tmp_path):
    grid = ["--multirun", f"hydra.sweep.dir={tmp_path / 'grid'}", *tiny_data_overrides(tiny_mnist)]
    grid += ["trainer.epochs=1", "logger=none"]
    assert run_cli("src.train", *grid, "scheduler.gamma=0.1,0.5").returncode == 0
    before = files_of(tmp_path / "grid")
    again = run_cli("src.train", *grid, "scheduler.gamma=0.2,0.3")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: hydra.sweep.dir={tmp_path / 'grid'} holds the runs of another sweep: choose another "
        "directory, or add overwrite=true to replace them"
    ]
    assert files_of(tmp_path / "grid") == before
    assert run_cli("src.train", *grid, "scheduler.gamma=0.2,0.3", "overwrite=true").returncode == 0
    assert sorted(composed(d)["scheduler"]["gamma"] for d in trial_dirs(tmp_path / "grid")) == [0.2, 0.3]


def test_a_plain_grid_stops_in_one_line_before_the_job_a_filling_disk_has_no_room_for(
    tiny_mnist, small_filesystem
):
    """Before, its later jobs ran on the full disk: their weights were not saved (`weights_error`), and
    once Hydra could not write a job's .hydra/ the grid ended with its traceback, that job's directory
    half-made."""
    import shutil

    disk = small_filesystem("2m")
    (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - (1 << 20) - 300_000))
    sweep = disk / "grid"
    grid = ["--multirun", f"hydra.sweep.dir={sweep}", *tiny_data_overrides(tiny_mnist), "trainer.epochs=1"]
    weights_of_400_kb = ["model=mlp", "model.hidden_sizes=[128]", "logger=none"]
    result = run_cli("src.train", *grid, *weights_of_400_kb, "optimizer.lr=0.01,0.02,0.03,0.04")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert re.fullmatch(
        f"error: hydra.sweep.dir={re.escape(str(sweep))} cannot be written: its file system has [0-9]+ kB "
        r"free, less than the 1 MB a run needs; the grid stopped before job 1 "
        r"\(the jobs before it have their results\)",
        line,
    )
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir()) == ["0"]  # job 1's directory is gone
    metrics = read_json(sweep / "0" / "metrics.json")
    assert metrics["status"] == "completed" and "weights_error" not in metrics
    assert (sweep / "0" / "model.pt").exists()


BAD_STORAGES = [
    ("{_target_: os.system, command: 'echo PWNED'}", "_target_ 'os.system' is not allowed"),
    (
        "{_target_: optuna.storages.JournalStorage, log_storage: {_target_: builtins.open, file: x}}",
        "_target_ 'builtins.open' is not allowed",
    ),
    (
        "{_target_: optuna.storages.InMemoryStorage}",
        "'optuna.storages.InMemoryStorage' is not allowed: each job",
    ),
    ("5", "hydra.sweeper.storage=5 is not allowed"),
    ("sqlite:///NOT_A_DATABASE", "file is not a database"),
]


@pytest.mark.parametrize(("storage", "message"), BAD_STORAGES)
def test_a_bad_storage_stops_the_sweep_with_one_line_and_runs_nothing(tiny_mnist, tmp_path, storage, message):
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("not a database\n")
    args = optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "trainer.epochs=1")
    args.remove(next(a for a in args if a.startswith("hydra.sweeper.storage=")))
    storage = storage.replace("NOT_A_DATABASE", str(not_a_database))
    result = run_cli("src.train", *args, f"hydra.sweeper.storage={storage}")
    # a setting no storage can be made from is bad input (2); a file that holds no database, an error (1)
    assert result.returncode == (1 if storage.startswith("sqlite") else 2)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert "PWNED" not in result.stdout + result.stderr
    assert not (tmp_path / "sweep").exists() and not_a_database.read_text() == "not a database\n"


def test_a_sweep_into_a_read_only_file_system_stops_before_its_study_exists(
    tiny_mnist, tmp_path, small_filesystem
):
    disk = small_filesystem("1m", read_only=True)
    args = optuna_sweep_args(tiny_mnist, tmp_path, "sweep", "trainer.epochs=1")
    result = run_cli("src.train", *args, f"hydra.sweep.dir={disk / 'sweep'}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith(f"error: hydra.sweep.dir={disk / 'sweep'} cannot be written: ")
        and "read-only" in line
    )
    assert not (tmp_path / "optuna.db").exists()  # no study, so no trial left FAIL or WAITING in it


def test_a_quote_in_the_working_directory_storage_and_study_name_breaks_nothing(tiny_mnist, tmp_path):
    """Jobs get their trial as two integers, never as a path or a name built into an override."""
    project = tmp_path / "it's mine"
    project.mkdir()
    storage = "sqlite:///" + str(project / "o'db.db")
    sweep = [
        "--multirun",
        "hparams_search=steplr_optuna",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "trainer.epochs=1",
        "logger=none",
        # Hydra's override grammar: a value with a quote is written inside the other kind of quotes.
        '''hydra.sweeper.study_name="o'brien"''',
        f'hydra.sweeper.storage="{storage}"',
        *tiny_data_overrides(tiny_mnist),
    ]
    result = run_cli("src.train", *sweep, cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="o'brien", storage=storage)
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(completed) == 2 == len(study.trials)
    for trial in completed:
        assert read_json(project / trial.user_attrs["run_dir"] / "metrics.json")["status"] == "completed"
    listing = run_cli("src.compare", "--study", "o'brien", "--storage", storage, cwd=project)
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert listing.stdout.count("  completed  ") == 2, listing.stdout


def descendants(pid: int) -> set[int]:
    """The processes below pid now (children of children included), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.parametrize("stop", ["SIGKILL to the sweep's process", "SIGTERM to its process group"])
def test_killing_a_joblib_sweep_stops_its_workers_training(tiny_mnist, tmp_path, stop):
    """SIGKILL reaches only the sweep's process: its joblib workers notice within seconds, record their run
    as interrupted and end, instead of training on for nobody. SIGTERM to the whole group (`timeout`, a
    service manager) is the sweep's Ctrl-C, and the workers wait for the sweep's end as on Ctrl-C (before,
    they died at once and left their runs without metrics.json)."""
    from helpers.workers import start_worker

    sweep = start_worker(
        [
            sys.executable,
            "-m",
            "src.train",
            *optuna_sweep_args(
                tiny_mnist,
                tmp_path,
                "sweep",
                "hydra/launcher=joblib",
                "hydra.sweeper.n_jobs=2",
                "hydra.sweeper.n_trials=2",
                "trainer.epochs=400",
                "logger=none",
                "trainer.prefix_cache=null",
            ),
        ],
        tmp_path,
        "sweep.log",
    )
    try:
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "sweep").glob("*/metrics.csv"))) < 2:
            assert sweep.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.5)
        workers = descendants(sweep.pid)
        assert workers
        if stop.startswith("SIGKILL"):
            os.kill(sweep.pid, signal.SIGKILL)
            sweep.wait()
        else:
            os.killpg(sweep.pid, signal.SIGTERM)
            assert sweep.wait(120) == -signal.SIGINT  # as on Ctrl-C
            assert "interrupted (SIGTERM)" in (tmp_path / "sweep.log").read_text().splitlines()
        deadline = time.monotonic() + 30
        while live := {pid for pid in workers if process_start_time(pid) is not None}:
            assert time.monotonic() < deadline, f"workers {live} still run 30 s after their sweep was killed"
            time.sleep(0.5)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
    for run_dir in trial_dirs(tmp_path / "sweep"):
        metrics = read_json(run_dir / "metrics.json")
        assert metrics["status"] == "interrupted"
        assert 0 < metrics["epochs_completed"] < 400


def test_sigterm_to_one_joblib_worker_requeues_its_trial_and_the_sweep_goes_on(tiny_mnist, tmp_path):
    """`kill PID` on one worker: its run ends as interrupted (files written), its job hands back
    JobInterrupted (not a KeyboardInterrupt, which made joblib abort the whole batch), and the sweep fails
    that trial as interrupted, queues it again and finishes its n_trials. Before, the worker ignored the
    signal while its sweep lived."""
    from helpers.workers import finish, start_worker

    extra = ("hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4")
    sweep = start_worker(
        [sys.executable, "-m", "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", *extra),
         "trainer.epochs=300", "trainer.prefix_cache=null", "logger=none"],
        tmp_path,
        "sweep.log",
    )  # fmt: skip
    first_log = tmp_path / "sweep" / "0" / "train.log"
    deadline = time.monotonic() + 300
    while not (first_log.parent / "metrics.csv").exists():
        assert sweep.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
        time.sleep(0.05)
    worker = next(  # the worker that runs job 0 writes its log
        pid
        for pid in descendants(sweep.pid)
        for fd in Path(f"/proc/{pid}/fd").glob("*")
        if os.path.realpath(fd) == str(first_log)
    )
    os.kill(worker, signal.SIGTERM)
    assert finish(sweep) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    assert read_json(first_log.parent / "metrics.json")["status"] == "interrupted"
    trials = load_study(tmp_path).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"]
    assert trials[0].user_attrs["fail_reason"] == "interrupted: the run stopped (SIGTERM)"
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4


def test_opening_a_storage_retries_when_another_worker_created_its_tables_first():
    """PostgreSQL reports the lost race as DuplicateTable, a ProgrammingError (seen in CI: two workers started
    together, one stopped with 'relation "studies" already exists'); SQLite as a locked database."""
    import sqlalchemy

    from hydra_plugins.optuna_pruning_sweeper.storage import StorageError, with_retries

    for lost_race in (
        sqlalchemy.exc.ProgrammingError(
            "CREATE TABLE studies", {}, Exception('relation "studies" already exists')
        ),
        sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("database is locked")),
    ):
        attempts: list[int] = []

        def open_once(error=lost_race, attempts=attempts):
            attempts.append(1)
            if len(attempts) == 1:
                raise error
            return "opened"

        assert with_retries(open_once, "the test storage") == "opened" and len(attempts) == 2
    with pytest.raises(StorageError, match="permission denied"):
        with_retries(
            lambda: (_ for _ in ()).throw(
                sqlalchemy.exc.ProgrammingError(
                    "SELECT", {}, Exception("permission denied for table studies")
                )
            ),
            "the test storage",
        )


@pytest.mark.parametrize("as_config", [False, True], ids=["url", "RDBStorage config"])
def test_a_job_opens_its_sweeps_database_without_optunas_schema_setup(tmp_path, as_config):
    """The sweeper made the tables and checked their version (alembic's scripts read: 20 to 60 ms); a job
    opening the same database after it does neither. Shown on a database stamped with a revision this Optuna
    does not know: the sweeper's open refuses it, the job's reads it."""
    import sqlalchemy
    from omegaconf import OmegaConf

    from hydra_plugins.optuna_pruning_sweeper.storage import StorageError, open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = OmegaConf.create({"_target_": "optuna.storages.RDBStorage", "url": url}) if as_config else url

    def opened(**options):
        return open_storage(spec, sweep_dir=lambda: tmp_path, cwd=tmp_path, **options)

    optuna.create_study(study_name="s", storage=opened())
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    engine.dispose()
    with pytest.raises(StorageError, match="no longer compatible with the table schema"):
        opened()
    job_storage = opened(schema_ready=True)
    assert job_storage.get_study_name_from_id(job_storage.get_study_id_from_name("s")) == "s"


def test_a_database_the_sweeper_creates_is_not_checked_against_optunas_migrations(tmp_path, monkeypatch):
    """A new SQLite file is stamped with this Optuna's schema version as it is made: reading it back against
    alembic's scripts (50 ms of a sweep's start) is left out. A file that exists is checked."""
    import sqlalchemy
    from optuna.storages._rdb.storage import _VersionManager

    from hydra_plugins.optuna_pruning_sweeper.storage import StorageError, is_new_sqlite_file, open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    head = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'reference.db'}").get_head_version()

    def refused(self) -> None:
        raise RuntimeError("checked")

    monkeypatch.setattr(_VersionManager, "check_table_schema_compatibility", refused)
    assert is_new_sqlite_file(url) and not is_new_sqlite_file(f"{url}?mode=ro&uri=true")
    storage = open_storage(url, sweep_dir=lambda: tmp_path, cwd=tmp_path)
    optuna.create_study(study_name="s", storage=storage)
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        stamped = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert stamped == head and not is_new_sqlite_file(url)
    with pytest.raises(StorageError, match="checked"):
        open_storage(url, sweep_dir=lambda: tmp_path, cwd=tmp_path)


JOB_SIDE_OF_A_TRIAL = """
import sys
from pathlib import Path
import optuna
from hydra_plugins.optuna_pruning_sweeper.storage import open_storage
storage = open_storage(sys.argv[1], sweep_dir=Path, cwd=Path(), schema_ready=True)
study = optuna.load_study(study_name="s", storage=storage, pruner=optuna.pruners.MedianPruner(0, 0))
trial = optuna.Trial(study, int(sys.argv[2]))
trial.set_user_attr("run_dir", "multirun/0")
trial.report(0.5, 1)
trial.should_prune()
print("alembic" in sys.modules, storage.get_current_version() == storage.get_head_version())
"""


def test_a_jobs_process_reaches_its_trial_without_importing_alembic(tmp_path):
    """alembic records and upgrades a database's schema version, which the sweeper did when it made the
    tables; a job opening the study (its trial, a report, a pruning check) does without it: 65 ms of the
    batched launcher's launch process. Asked its schema version, the storage still answers, as Optuna's."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.enqueue_trial({})
    trial_id = study.ask()._trial_id
    result = subprocess.run(
        [sys.executable, "-c", JOB_SIDE_OF_A_TRIAL, url, str(trial_id)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True"]
    stored = optuna.load_study(study_name="s", storage=url).trials[0]
    assert stored.user_attrs == {"run_dir": "multirun/0"} and stored.intermediate_values == {1: 0.5}


@pytest.mark.parametrize("when", ["after its statement ran", "while its rows become objects"])
def test_a_study_can_be_written_right_after_ctrl_c_stopped_one_of_its_reads(tmp_path, monkeypatch, when):
    """Ctrl-C in the middle of a read (a trial's report, a pruning check) leaves an open SQLite statement in
    the traceback's frames; its shared lock blocked every write of the process, the trial's status
    `interrupted` among them, for the whole busy timeout (seen: a batch's process hung after its sweep
    died), and every other process's writes until this one ended. The second case is where a Ctrl-C landed
    in a joblib worker whose sweep then hung: SQLAlchemy builds the row's objects in a comprehension, whose
    function's closure keeps the result alive after its frame is cleared."""
    import sqlalchemy
    import sqlalchemy.orm.loading

    from hydra_plugins.optuna_pruning_sweeper.storage import release_interrupted_access

    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'optuna.db'}", engine_kwargs={"connect_args": {"timeout": 3}}
    )
    trial_id = optuna.create_study(storage=storage).ask()._trial_id
    other_process = optuna.storages.RDBStorage(  # a connection of its own, as another process has
        f"sqlite:///{tmp_path / 'optuna.db'}", engine_kwargs={"connect_args": {"timeout": 1}}
    )
    stopped_reads = []

    def ctrl_c_once() -> None:
        if not stopped_reads:
            stopped_reads.append(when)
            raise KeyboardInterrupt

    if when == "after its statement ran":

        @sqlalchemy.event.listens_for(storage.engine, "after_cursor_execute")
        def ctrl_c_during_a_read(connection, cursor, statement, *args):
            if statement.lstrip().upper().startswith("SELECT"):
                ctrl_c_once()

    else:
        make_loader = sqlalchemy.orm.loading._instance_processor

        def ctrl_c_while_loading(*args, **kwargs):
            ctrl_c_once()
            return make_loader(*args, **kwargs)

        monkeypatch.setattr(sqlalchemy.orm.loading, "_instance_processor", ctrl_c_while_loading)
    try:
        storage.get_trial(trial_id)
    except KeyboardInterrupt as stop:
        release_interrupted_access(stop, storage)
        started = time.monotonic()
        storage.set_trial_user_attr(trial_id, "status", "interrupted")
        assert time.monotonic() - started < 2  # not after waiting out the busy timeout
        other_process.set_trial_user_attr(trial_id, "seen by", "another process")  # else "database is locked"
    assert stopped_reads == [when]
    assert storage.get_trial(trial_id).user_attrs == {"status": "interrupted", "seen by": "another process"}


def interrupt_a_session_close_once(monkeypatch, armed: list[bool]) -> None:
    """Ctrl-C inside SQLAlchemy's Session.close (as one landed there in a sweep on the basic launcher): after
    the session's identity map is invalidated, before the new one is made. Each RDBStorage access ends with
    that close; the first one once `armed` holds True is interrupted."""
    import sqlalchemy.orm.identity

    make_identity_map = sqlalchemy.orm.identity._WeakInstanceDict

    def interrupted_while_closing(*args, **kwargs):
        if armed and armed.pop():
            raise KeyboardInterrupt
        return make_identity_map(*args, **kwargs)

    monkeypatch.setattr(sqlalchemy.orm.identity, "_WeakInstanceDict", interrupted_while_closing)


def test_a_study_can_be_written_after_ctrl_c_stopped_its_session_closing(tmp_path, monkeypatch):
    """Optuna keeps one session per thread and closes it after each access; interrupted in that close, it
    was left unusable ("this identity map is no longer valid") for every later access of the thread."""
    from hydra_plugins.optuna_pruning_sweeper.storage import release_interrupted_access

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    trial_id = optuna.create_study(storage=storage).ask()._trial_id
    armed: list[bool] = []
    interrupt_a_session_close_once(monkeypatch, armed)
    storage.get_trial(trial_id)  # (the thread's session exists: the next identity map made is in close)
    armed.append(True)
    with pytest.raises(KeyboardInterrupt) as stop:
        storage.get_trial(trial_id)
    assert not armed
    release_interrupted_access(stop.value, storage)
    storage.set_trial_user_attr(trial_id, "status", "interrupted")
    assert storage.get_trial(trial_id).user_attrs == {"status": "interrupted"}


def a_trial_and_its_run(tiny_mnist, tmp_path, monkeypatch):
    """A running trial of a SQLite study, and the config of a 5-epoch run as its sweep's job (its
    environment set as the sweeper sets a job's): the study, the trial, the config, the run's directory."""
    from helpers.cli import compose_run

    from hydra_plugins.optuna_pruning_sweeper.trial_bridge import job_environment

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    for override in job_environment(study._study_id, trial._trial_id):
        name, value = override.removeprefix("++hydra.job.env_set.").split("=", 1)
        monkeypatch.setenv(name, value.strip("'"))
    run_dir = tmp_path / "run"
    cfg = compose_run(
        [*tiny_data_overrides(tiny_mnist), "hparams_search=steplr_optuna", f"hydra.sweeper.storage={storage}",
         "trainer.epochs=5", "logger=none", "trainer.prefix_cache=null"],
        run_dir,
    )  # fmt: skip
    return study, trial, cfg, run_dir


@pytest.mark.parametrize("recorded", [True, False], ids=["outcome recorded", "recording fails"])
def test_ctrl_c_during_a_trials_report_ends_the_run_as_interrupted_with_its_outcome_on_the_trial(
    tiny_mnist, tmp_path, monkeypatch, caplog, recorded
):
    """The run's end reaches the trial after that Ctrl-C. Should recording it fail all the same, the Ctrl-C
    is what the run raises: raised instead, the recording's error made a sweep on the basic launcher take
    the Ctrl-C for one failed trial and run on to its end (1 of 16 Ctrl-Cs in a loop)."""
    import src.run

    study, trial, cfg, run_dir = a_trial_and_its_run(tiny_mnist, tmp_path, monkeypatch)
    armed: list[bool] = []
    interrupt_a_session_close_once(monkeypatch, armed)
    report = optuna.Trial.report

    def report_then_ctrl_c_at_epoch_2(self, value, step):
        armed.append(step == 2)  # the report's own session close is interrupted
        report(self, value, step)

    monkeypatch.setattr(optuna.Trial, "report", report_then_ctrl_c_at_epoch_2)
    if not recorded:

        def database_gone(*args, **kwargs):
            raise optuna.exceptions.StorageInternalError("the database went away")

        monkeypatch.setattr(src.run, "set_trial_attrs", database_gone)
    with pytest.raises(KeyboardInterrupt):
        src.run.train(cfg)
    assert read_json(run_dir / "metrics.json")["status"] == "interrupted"
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    expected = ("interrupted", 2) if recorded else (None, None)
    assert (attrs.get("status"), attrs.get("epochs_completed")) == expected
    assert recorded or "outcome not recorded on the trial: StorageInternalError: the database went away" in {
        record.getMessage() for record in caplog.records
    }


def test_a_ctrl_c_while_a_run_reports_to_its_study_is_taken_once_the_report_is_written(
    tiny_mnist, tmp_path, monkeypatch
):
    """SIGINT sent to the run's process while its epoch-2 report is in SQLAlchemy's hands (between the
    INSERT and the commit): the report is written whole, then the run stops as interrupted. Before, the
    KeyboardInterrupt was raised there, and SQLAlchemy's cleanup could replace it (an AssertionError from
    its transaction's commit): the run failed instead, and its sweep ran on (1 in 100 Ctrl-Cs)."""
    import sqlalchemy

    import src.run
    from hydra_plugins.optuna_pruning_sweeper.trial_bridge import current_trial

    study, trial, cfg, run_dir = a_trial_and_its_run(tiny_mnist, tmp_path, monkeypatch)
    sent = []

    def ctrl_c_in_the_epoch_2_report(connection, cursor, statement, parameters, *args):
        if "INSERT INTO trial_intermediate_values" in statement and 2 in parameters and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler at its next line: still in here

    engine = current_trial().storage._backend.engine  # (the run's own connection to its study)
    sqlalchemy.event.listen(engine, "after_cursor_execute", ctrl_c_in_the_epoch_2_report)
    with pytest.raises(KeyboardInterrupt):
        src.run.train(cfg)
    assert sent
    assert read_json(run_dir / "metrics.json")["status"] == "interrupted"
    written = study._storage.get_trial(trial._trial_id)
    assert written.intermediate_values.keys() == {1, 2}
    assert (written.user_attrs["status"], written.user_attrs["epochs_completed"]) == ("interrupted", 2)


def test_each_trial_records_its_fixed_values_once_as_the_numbers_they_are_and_gets_them_as_overrides():
    """claim() records them with the worker as each trial is asked (one write); _configure_trials only makes
    the overrides."""
    from optuna.distributions import FloatDistribution

    from hydra_plugins.optuna_pruning_sweeper.sweeper import PruningOptunaSweeperImpl, typed_value
    from hydra_plugins.optuna_pruning_sweeper.workers import WORKER, Worker, claim

    storage = optuna.storages.InMemoryStorage()
    writes = []
    write = storage.set_trial_user_attr

    def counted_write(trial_id, key, value):
        writes.append(key)
        write(trial_id, key, value)

    storage.set_trial_user_attr = counted_write
    study = optuna.create_study(storage=storage)
    worker = Worker.this_process()
    fixed = {"trainer.epochs": "3", "logger": "none"}
    trials = [study.ask() for _ in range(2)]
    for trial in trials:
        claim(study, trial, worker, {name: typed_value(value) for name, value in fixed.items()})
    sweeper = object.__new__(PruningOptunaSweeperImpl)  # _configure_trials reads only these two
    sweeper.custom_search_space_extender = None
    sweeper.config = None
    overrides = sweeper._configure_trials(trials, {"x": FloatDistribution(0, 1)}, fixed, ["+extra=1"])
    for trial, trial_overrides in zip(trials, overrides, strict=True):
        assert trial_overrides == (f"x={trial.params['x']}", "trainer.epochs=3", "logger=none", "+extra=1")
    assert sorted(writes) == sorted(["logger", "trainer.epochs", WORKER] * 2)  # once per trial
    assert [t.user_attrs for t in study.get_trials()] == [
        {"trainer.epochs": 3, "logger": "none", WORKER: worker.label}
    ] * 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "journal"])
def test_a_trials_attributes_are_set_in_one_transaction_and_never_on_a_finished_trial(
    tmp_path, kind, request
):
    """On a database: one commit, and two statements per trial besides the trial's lookup (one upsert of its
    user attributes, one of its system attributes), where RDBStorage's setters take two per key."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy import event

    from hydra_plugins.optuna_pruning_sweeper.storage import set_trial_attrs

    if kind == "sqlite":
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
    elif kind == "postgresql":
        storage = optuna.storages.RDBStorage(request.getfixturevalue("postgres_url"))
    else:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    commits, statements = [], []
    if kind != "journal":
        event.listen(storage.engine, "commit", lambda connection: commits.append(1))
        event.listen(storage.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    set_trial_attrs(study._storage, trial._trial_id, {"a": 1, "b": [2.5, "x"], "c": None}, {"s": {"k": 1}})
    if kind != "journal":
        assert len(commits) == 1  # one per key through the public setters
        assert len(statements) == 3, statements  # the lookup, then one upsert per kind: 8 key by key
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {"a": 1, "b": [2.5, "x"], "c": None}
    assert stored.system_attrs == {"s": {"k": 1}}
    set_trial_attrs(study._storage, trial._trial_id, {"a": 3})  # an existing key is overwritten
    assert study._storage.get_trial(trial._trial_id).user_attrs["a"] == 3
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        set_trial_attrs(study._storage, trial._trial_id, {"late": 1, "a": 4})
    assert study._storage.get_trial(trial._trial_id).user_attrs == {"a": 3, "b": [2.5, "x"], "c": None}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_sweeper_records_a_trials_run_directory_only_where_its_job_did_not(tmp_path, kind):
    """A job records its directory on its trial as it starts (trial_bridge.current_trial), in its own
    process; the sweeper writes it as it tells the outcome only when the job did not (a job that failed
    before its trial was reached), reading what is stored rather than its own copy of the trial."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf
    from optuna.storages.journal import JournalFileBackend

    from hydra_plugins.optuna_pruning_sweeper.sweeper import PruningOptunaSweeperImpl
    from hydra_plugins.optuna_pruning_sweeper.trial_bridge import RUN_DIR

    def storage():  # each call another connection to the same study, as another process has
        if kind == "sqlite":
            return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
        return optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))

    study = optuna.create_study(storage=storage())
    recorded, unrecorded = study.ask(), study.ask()
    storage().set_trial_user_attr(recorded._trial_id, RUN_DIR, "sweep/0")  # by its job, in its process
    sweeper = object.__new__(PruningOptunaSweeperImpl)  # _tell reads only this
    sweeper.cwd = tmp_path
    writes = []
    write = study._storage.set_trial_user_attr

    def counted_write(trial_id, key, value):
        writes.append(key)
        write(trial_id, key, value)

    study._storage.set_trial_user_attr = counted_write
    for trial, number in ((recorded, 0), (unrecorded, 1)):
        job = JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)
        job.hydra_cfg = OmegaConf.create(
            {"hydra": {"runtime": {"output_dir": str(tmp_path / f"sweep/{number}")}}}
        )
        sweeper._tell(study, trial, job)
    assert writes == [RUN_DIR]  # for the trial whose job had not recorded it
    assert [t.user_attrs[RUN_DIR] for t in study.get_trials()] == ["sweep/0", "sweep/1"]
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_a_trials_sampler_draws_as_one_instantiated_with_its_seed_and_gets_nested_objects_of_its_own():
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper.config import (
        CmaEsSamplerConfig,
        GridSamplerConfig,
        TPESamplerConfig,
    )
    from omegaconf import OmegaConf

    from hydra_plugins.optuna_pruning_sweeper.sweeper import SAMPLER_WHITELIST, sampler_builder

    def draws(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda trial: (trial.suggest_float("x", -1, 1) - 0.3) ** 2, n_trials=6)
        return [trial.params["x"] for trial in study.trials]

    tpe = OmegaConf.structured(TPESamplerConfig(seed=42, n_startup_trials=3))
    build = sampler_builder(tpe, constant_liar=True)  # instantiated once, as a partial
    by_seed = {}
    for seed in (1, 2):
        made = build(seed)
        assert made._constant_liar
        alone = instantiate(tpe, seed=seed, constant_liar=True, _execution_whitelist_=SAMPLER_WHITELIST)
        by_seed[seed] = draws(made)
        assert by_seed[seed] == draws(alone)
    assert by_seed[1] != by_seed[2]

    cmaes = OmegaConf.structured(CmaEsSamplerConfig(seed=1))
    cmaes.independent_sampler = {"_target_": "optuna.samplers.RandomSampler", "seed": 3}
    build = sampler_builder(cmaes)
    first, second = build(1), build(2)
    assert first._independent_sampler is not second._independent_sampler  # a seeded RNG each, not shared
    assert draws(first._independent_sampler) == draws(second._independent_sampler)

    grid = OmegaConf.structured(GridSamplerConfig(seed=5))  # a partial of its own, given the grid later
    assert isinstance(sampler_builder(grid)(5)({"x": [0.1, 0.2]}), optuna.samplers.GridSampler)


def test_a_trial_given_up_before_its_values_were_drawn_is_not_queued_again_and_the_log_says_why(
    tmp_path, caplog
):
    """Ctrl-C while a batch's trials get their values: those without values have nothing to run again (the
    line used to say the trial already was a retry of itself)."""
    from hydra_plugins.optuna_pruning_sweeper.workers import give_up

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    bare = study.ask()
    valued = study.ask()
    valued.suggest_float("x", 0, 1)
    for trial in (bare, valued):
        assert give_up(study, study._storage.get_trial(trial._trial_id), "interrupted")
    assert f"Trial {bare.number} is not queued again: it has no searched values to run again" in caplog.text
    assert "already was a retry" not in caplog.text
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [valued.params]


def test_a_trial_whose_job_recorded_its_end_gets_that_outcome_when_given_up(tmp_path, caplog):
    """A job that ended before its worker could tell the study (the worker killed while the job ran in
    another process) is not trained again: the sweep that gives it up tells the study what the job
    recorded. A job that recorded nothing, or nothing the study can take, runs again as before."""
    from hydra_plugins.optuna_pruning_sweeper.trial_bridge import JOB_END, job_end
    from hydra_plugins.optuna_pruning_sweeper.workers import give_up

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    recorded = {
        "completed": job_end(TrialState.COMPLETE, [92.5]),
        "pruned": job_end(TrialState.PRUNED, reason="pruned at epoch 2"),
        "failed": job_end(TrialState.FAIL, reason="TrainingDiverged: the loss is nan"),
        "not finite": job_end(TrialState.COMPLETE, [float("nan")]),
        "nothing": None,
    }
    trials = {}
    for name, ended in recorded.items():
        trials[name] = study.ask()
        trials[name].suggest_float("x", 0, 1)
        if ended is not None:
            study._storage.set_trial_system_attr(trials[name]._trial_id, JOB_END, ended)
    for trial in trials.values():
        assert give_up(study, study._storage.get_trial(trial._trial_id), "interrupted: its worker ended")
    ended = {name: study._storage.get_trial(trial._trial_id) for name, trial in trials.items()}
    assert ended["completed"].state == TrialState.COMPLETE and ended["completed"].value == 92.5
    assert ended["pruned"].state == TrialState.PRUNED
    assert ended["failed"].state == TrialState.FAIL and "interrupted" not in ended["failed"].user_attrs
    assert ended["failed"].user_attrs["fail_reason"] == "TrainingDiverged: the loss is nan"
    for name in ("not finite", "nothing"):
        assert ended[name].state == TrialState.FAIL and ended[name].user_attrs["interrupted"]
    queued = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]
    assert queued == [trials["not finite"].params, trials["nothing"].params]
    number = trials["completed"].number
    assert (
        f"Trial {number} completed with 92.5, as its job recorded before its worker could tell" in caplog.text
    )
    # Another worker that finds the trial ended already leaves it as it is.
    assert not give_up(study, study._storage.get_trial(trials["completed"]._trial_id), "stale heartbeat")


def test_numbered_job_directories_are_claimed_so_that_no_two_processes_get_one(tmp_path):
    """Workers given one hydra.sweep.dir take the numbers of their batches by making each job's directory:
    numbers whose directories exist are skipped, a batch's numbers are consecutive, and a stopped batch's
    directories that no job wrote into are removed again."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from omegaconf import OmegaConf

    from hydra_plugins.optuna_pruning_sweeper.job_dirs import NumberedDirectories, first_job_number

    def sweep(subdir: str):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "s"), "subdir": subdir}}})

    def first_number(subdir: str) -> int:  # as the sweeper starts its job numbers
        return first_job_number(tmp_path / "s", NumberedDirectories.of(sweep(subdir)))

    default = NumberedDirectories.of(sweep("${hydra.job.num}"))
    assert default is not None and default.of_job(3) == tmp_path / "s" / "3"
    assert (
        NumberedDirectories.of(sweep("runs/trial_${hydra:job.num}")).of_job(2) == tmp_path / "s/runs/trial_2"
    )
    for varies in ("gamma_${scheduler.gamma}", "${hydra.job.num}_${trainer.seed}", "${hydra.job.num}/run"):
        assert NumberedDirectories.of(sweep(varies)) is None

    assert default.next_number() == 0  # no sweep directory yet
    assert default.claim(0, 3) == 0
    assert default.claim(0, 2) == 3  # another worker's batch: 0 to 2 are taken
    (tmp_path / "s" / "6").mkdir()
    assert default.claim(5, 2) == 7  # 5 alone is free: the batch takes 7 and 8, and 5 is given back
    assert not (tmp_path / "s" / "5").exists()
    assert default.next_number() == 9 == first_number("${hydra.job.num}")
    (tmp_path / "s" / "7" / "train.log").write_text("a job ran")
    submitit_launcher = type("SlurmLauncher", (), {"__module__": "hydra_plugins.hydra_submitit_launcher"})()
    default.release_unused(7, 2, submitit_launcher)  # its job 8 may start after the sweep stopped
    assert (tmp_path / "s" / "8").is_dir()
    default.release_unused(7, 2, BasicLauncher())
    assert (tmp_path / "s" / "7").is_dir() and not (tmp_path / "s" / "8").exists()
    assert first_number("gamma_${scheduler.gamma}") == 8  # the numbered directories there
    for name in ("trial_0", "trial_1", "trial_x"):
        (tmp_path / "s" / name).mkdir()
    # a sweep run again into its directory: trial_0 and trial_1 stay (before, its jobs began again at 0)
    assert first_number("trial_${hydra.job.num}") == 2


def test_workers_that_count_the_study_at_once_overshoot_n_trials_by_one_trial_each_not_a_batch(tmp_path):
    """Two workers with n_jobs=10 counted a study of 20 finished trials of n_trials=30 at the same instant:
    each asked a batch of 10, and the study ended with 40 trials (measured with two batched workers on one
    SQLite study). Each now stops asking once the trials made since its count fill what was left."""
    from hydra_plugins.optuna_pruning_sweeper.sweeper import AskBudget

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    for _ in range(20):
        study.tell(study.ask(), 1.0)
    study.enqueue_trial({"x": 0.5})  # a retry queued before the count: the count leaves room for it
    counted = len(study.get_trials(deepcopy=False))
    workers = [optuna.load_study(study_name="s", storage=url) for _ in range(2)]
    budget = AskBudget(size=10, new=9, counted=counted)  # n_trials=30: 20 finished, 1 queued
    asked: list[list[int]] = [[], []]
    asking = [True, True]
    while any(asking):  # the workers' asks interleaved, one each in turn
        for i, worker in enumerate(workers):
            if asking[i]:
                asked[i].append(worker.ask().number)
                asking[i] = not budget.filled(asked[i])
    assert asked[0][0] == counted - 1  # the queued trial was taken first
    made = len(study.get_trials(deepcopy=False)) - counted
    assert made == 9 + len(workers) - 1  # one trial over what was left, per further worker
    assert sorted(map(len, asked)) == [5, 6]

    assert AskBudget(size=3, new=10, counted=5).filled([5, 6, 7])  # n_jobs caps the batch
    assert not AskBudget(size=3, new=0, counted=5).filled([2, 3])  # queued trials are taken up to size
    assert AskBudget(size=3, new=0, counted=5).filled([2, 5])  # ... but none of them was left for this one


def test_the_batch_that_leaves_no_trial_to_ask_is_the_last_unless_another_worker_runs_one(tmp_path):
    """AskBudget.last: the batch takes every trial n_trials leaves and no other worker's trial is running,
    so the sweeper ends its launcher's launch process as that batch returns (before telling it)."""
    from hydra_plugins.optuna_pruning_sweeper.sweeper import PruningOptunaSweeperImpl
    from hydra_plugins.optuna_pruning_sweeper.workers import WORKER, WORKER_PROCESS, Worker

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    sweeper = object.__new__(PruningOptunaSweeperImpl)  # _trials_to_ask reads only these
    sweeper.n_trials, sweeper.n_jobs, sweeper.grace_period = 5, 2, 600
    assert not sweeper._trials_to_ask(study).last  # 5 to go, 2 a batch
    for _ in range(3):
        study.tell(study.ask(), 1.0)
    assert sweeper._trials_to_ask(study).last  # 2 to go, both in the next batch
    another = study.ask()  # another worker's trial, alive
    study._storage.set_trial_system_attr(another._trial_id, WORKER_PROCESS, Worker.this_process().as_attr())
    another.set_user_attr(WORKER, "another")
    budget = sweeper._trials_to_ask(study)
    assert (budget.size, budget.last) == (1, False)  # it may yet be queued again, for this worker to run


def test_a_killed_joblib_worker_ends_the_sweep_in_one_line_and_its_trials_say_so(tiny_mnist, tmp_path):
    """loky's TerminatedWorkerError (a worker SIGKILLed: the kernel's OOM killer) ended the sweep with a
    traceback, and the batch's trials said the sweep had been stopped while they ran. They are queued
    again."""
    args = optuna_sweep_args(
        tiny_mnist, tmp_path, "sweep", "trainer.epochs=300", "hydra.sweeper.n_trials=2", "logger=none"
    )
    sweep = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "sweep").glob("*/metrics.csv")):  # a job has trained an epoch
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.05)
    children = " ".join(p.read_text() for p in Path(f"/proc/{sweep.pid}/task").glob("*/children")).split()
    workers = [pid for pid in children if "popen_loky" in Path(f"/proc/{pid}/cmdline").read_text()]
    os.kill(int(workers[0]), signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 1 and "Traceback" not in stderr
    failure = "hydra/launcher=joblib failed: TerminatedWorkerError: A worker process managed by the executor"
    assert stderr.strip().splitlines()[-1].startswith(f"error: {failure}")
    assert stderr.strip().endswith(
        "(The exit codes of the workers are {SIGKILL(-9)}); its trials are queued again: "
        "run the same command to resume"
    )
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert all(t.user_attrs["fail_reason"].startswith(failure) for t in trials[:2])
