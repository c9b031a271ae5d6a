"""Pruning inside Hydra Optuna sweeps, through the real CLI on the tiny MNIST.

With step_size=1, a gamma of 0.001 or less collapses the learning rate after the first epoch, so
those trials fall behind the median of the finished ones at epoch 2 and must be pruned.
"""

import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.cli import compose_run, read_json, run_cli, tiny_data_overrides
from helpers.sweeps import check_pruned_trials, load_study, run_pruning_sweep

from hydra_plugins.optuna_pruning_sweeper.trial_bridge import job_environment
from src.pruning import PRUNE_FROM, first_prunable_epoch
from src.run import train


def test_median_pruner_stops_hopeless_trials_and_records_them_as_pruned(tiny_mnist, tmp_path):
    result = run_pruning_sweep(tiny_mnist, tmp_path, "sweep")
    pruned = check_pruned_trials(tmp_path, "sweep")
    assert f"{len(pruned)} pruned, 0 failed" in result.stderr + result.stdout
    assert "Pruning stopped" in result.stderr + result.stdout


def test_pruning_works_with_two_joblib_workers(tiny_mnist, tmp_path):
    run_pruning_sweep(tiny_mnist, tmp_path, "sweep", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2")
    check_pruned_trials(tmp_path, "sweep")


def test_resumed_study_keeps_its_pruned_trials_and_goes_on_pruning(tiny_mnist, tmp_path):
    run_pruning_sweep(tiny_mnist, tmp_path, "first", "hydra.sweeper.n_trials=4")
    before = {t.number: (t.state, t.params) for t in load_study(tmp_path).trials}
    assert len(before) == 4
    run_pruning_sweep(tiny_mnist, tmp_path, "second", "hydra.sweeper.n_trials=6")
    after = load_study(tmp_path).trials
    assert len(after) == 6
    assert {t.number: (t.state, t.params) for t in after[:4]} == before
    assert len({t.params["scheduler.gamma"] for t in after}) == 6  # nothing re-run
    check_pruned_trials(tmp_path, "second")


PRUNER_CLASSES = {
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "percentile": "PercentilePruner",
    "none": "NopPruner",
}


@pytest.mark.parametrize("pruner", PRUNER_CLASSES)
def test_every_pruner_option_composes_and_runs(tiny_mnist, tmp_path, pruner):
    result = run_pruning_sweep(
        tiny_mnist, tmp_path, "sweep", "hydra.sweeper.n_trials=3", pruner=[f"hydra/sweeper/pruner={pruner}"]
    )
    assert f"pruner {PRUNER_CLASSES[pruner]}," in result.stdout + result.stderr
    study = load_study(tmp_path)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    for trial in study.trials:  # every epoch was reported to the trial
        metrics = read_json(Path(trial.user_attrs["run_dir"]) / "metrics.json")
        assert trial.last_step == metrics["epochs_completed"]
        assert trial.intermediate_values[trial.last_step] == metrics["val_acc"]


def test_pruner_arguments_are_overridable(tiny_mnist, tmp_path):
    result = run_cli(
        "src.train",
        "hparams_search=steplr_optuna",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_warmup_steps=3",
        "--cfg",
        "hydra",
        "--package",
        "hydra.sweeper.pruner",
    )
    assert result.returncode == 0, result.stderr
    pruner = yaml.safe_load(result.stdout)
    assert pruner["_target_"] == "optuna.pruners.MedianPruner" and pruner["n_warmup_steps"] == 3


PRUNE_FROM_CASES = [  # prune_from, what the trial searches, the epoch after which it is pruned (step_size 3)
    ("auto", [], 4),  # a schedule-only search: from the first decay
    ("auto", ["optimizer.lr"], 1),  # trials differ from the start
    ("first_decay", ["optimizer.lr"], 4),
    ("first_epoch", [], 1),
]


@pytest.mark.parametrize(("prune_from", "searched", "pruned_after"), PRUNE_FROM_CASES)
def test_the_pruner_is_asked_from_the_epoch_prune_from_names(
    tiny_mnist, tmp_path, monkeypatch, prune_from, searched, pruned_after
):
    """A run of a schedule-only search equals every other until its lr first leaves lr0 (here after
    epoch 3), so by default its pruner waits for that; once lr0 is searched too, it judges from epoch 1."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(2):  # finished trials far ahead at every epoch: the median pruner prunes whenever asked
        study.add_trial(
            optuna.trial.create_trial(
                value=100.0,
                params={},
                distributions={},
                intermediate_values={epoch: 100.0 for epoch in range(1, 5)},
            )
        )
    trial = study.ask()
    trial.suggest_int("scheduler.step_size", 3, 3)
    for name in searched:
        trial.suggest_float(name, 1e-3, 1e-2)
    for override in job_environment(study._study_id, trial._trial_id):
        name, value = override.removeprefix("++hydra.job.env_set.").split("=", 1)
        monkeypatch.setenv(name, value.strip("'"))
    run_dir = tmp_path / "run"
    cfg = compose_run(
        [
            *tiny_data_overrides(tiny_mnist),
            "hparams_search=steplr_optuna",
            f"hydra.sweeper.storage={storage}",
            "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=0",
            "trainer.epochs=4",
            "scheduler.step_size=3",
            "logger=none",
            "trainer.prefix_cache=null",
            f"prune_from={prune_from}",
        ],
        run_dir,
    )
    with pytest.raises(optuna.TrialPruned):
        train(cfg)
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "pruned" and metrics["epochs_completed"] == pruned_after


@pytest.mark.parametrize(
    ("searched", "expected"),
    [
        (["scheduler.step_size", "scheduler.gamma"], (6, 1, 6)),
        (["scheduler"], (6, 1, 6)),  # a choice between schedulers: each trial still waits for its own decay
        (["scheduler", "scheduler.max_lr", "steps.warmup_epochs"], (6, 1, 6)),  # the families search
        (["scheduler.gamma", "optimizer.lr"], (1, 1, 6)),
        (["model"], (1, 1, 6)),
    ],
)
def test_first_prunable_epoch_follows_what_the_search_covers(searched, expected):
    """(auto, first_epoch, first_decay) for a run that keeps lr0 for 5 epochs."""
    assert tuple(first_prunable_epoch(mode, 5, searched) for mode in PRUNE_FROM) == expected


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_an_epoch_of_trials_trained_together_is_reported_in_one_commit_and_the_pruner_sees_it(tmp_path, kind):
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy import event

    from src.epoch_callbacks import ReportToOptuna, report_epoch_together
    from src.run_record import EpochRecord

    if kind == "sqlite":
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
        commits = []
        event.listen(storage.engine, "commit", lambda connection: commits.append(1))
    else:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    # prunes a trial whose value at this epoch is below 50, from epoch 1 on
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.ThresholdPruner(lower=50.0))
    trials = [study.ask() for _ in range(3)]
    reporters = [ReportToOptuna(trial, prune_from_epoch=1) for trial in trials]

    def epoch(number: int, accuracies: list[float]) -> list[EpochRecord]:
        times = {"train_time_s": 1.0, "epoch_time_s": 1.0}
        return [
            EpochRecord(number, 0.1, 1.0, 1.0, val_acc=acc, test_acc=acc, **times, lr_last=0.1)
            for acc in accuracies
        ]

    records = epoch(1, [90.0, 40.0, 80.0])
    if kind == "sqlite":
        commits.clear()
    report_epoch_together([[r] for r in reporters], records)
    stored = [{1: 90.0}, {1: 40.0}, {1: 80.0}]
    if kind == "sqlite":
        assert len(commits) == 1  # one per trial through Trial.report
        assert [r.reported_epoch for r in reporters] == [1, 1, 1]
        assert [study._storage.get_trial(t._trial_id).intermediate_values for t in trials] == stored
    else:  # no database: each reports on its own, in on_epoch_end
        assert [r.reported_epoch for r in reporters] == [0, 0, 0]
    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns of a step reported twice
        for reporter, record in zip(reporters, records, strict=True):
            try:
                reporter.on_epoch_end(record, [])
                outcomes.append("goes on")
            except optuna.TrialPruned:
                outcomes.append("pruned")
    assert outcomes == ["goes on", "pruned", "goes on"]  # the pruner saw each trial's value of the epoch
    assert [study._storage.get_trial(t._trial_id).intermediate_values for t in trials] == stored

    study.tell(trials[2], 1.0)  # finished meanwhile: the one write fails, each trial reports on its own
    records = epoch(2, [91.0, 92.0])
    report_epoch_together([[reporters[0]], [reporters[2]]], records)
    assert reporters[0].reported_epoch != 2  # not recorded together
    reporters[0].on_epoch_end(records[0], [])
    with pytest.raises(UpdateFinishedTrialError):
        reporters[2].on_epoch_end(records[1], [])
    assert study._storage.get_trial(trials[0]._trial_id).intermediate_values == {1: 90.0, 2: 91.0}
    assert study._storage.get_trial(trials[2]._trial_id).intermediate_values == {1: 80.0}
