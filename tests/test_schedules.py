"""Schedules beyond per-epoch ones: metric-driven, per-step (recorded at each step), a search of families."""

import csv

import optuna
import pytest
import torch
from helpers.cli import REPO, compose_run, read_json, run_cli, tiny_data_overrides
from helpers.training import read_rows, train_tiny
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

STEPS_PER_EPOCH = 16  # the tiny MNIST: 1,000 training images in batches of 64


@pytest.mark.parametrize(
    ("monitor", "mode", "rates"),
    [
        ("val_loss", "min", [0.001, 0.0005, 0.00025]),  # even the first epoch is no improvement on inf * 0
        ("val_acc", "max", [0.001, 0.001, 0.0005]),  # the first epoch improves on -inf
    ],
)
def test_plateau_cuts_the_lr_after_each_epoch_its_metric_does_not_improve(
    tiny_mnist, tmp_path, monitor, mode, rates
):
    """A relative threshold of 100% asks for twice the best accuracy or no loss at all: with patience 0,
    every epoch that brings neither cuts the lr."""
    train_tiny(
        tiny_mnist,
        tmp_path,
        "logger=none",
        "trainer.epochs=3",
        "scheduler=plateau",
        f"scheduler.monitor={monitor}",
        f"scheduler.mode={mode}",
        "scheduler.threshold=1.0",
        "scheduler.factor=0.5",
    )
    assert [float(row["lr"]) for row in read_rows(tmp_path)] == rates


def test_a_per_step_schedule_is_recorded_at_every_step(tiny_mnist, tmp_path):
    train_tiny(tiny_mnist, tmp_path, "logger=tensorboard", "trainer.epochs=2", "scheduler=onecycle")
    with open(tmp_path / "lr_steps.csv") as f:
        steps = [(int(row["step"]), float(row["lr"])) for row in csv.DictReader(f)]
    assert [step for step, _ in steps] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    rates = [lr for _, lr in steps]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(0.01, rel=0.01) and 0 < peak < len(rates) - 1  # up, then down
    assert rates[0] == pytest.approx(0.01 / 25) and rates[-1] < rates[0]
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(event.step, event.value) for event in events.Scalars("lr/step")]
    assert [step for step, _ in logged] == [step for step, _ in steps]  # 16 an epoch: all of them (up to 50)
    assert [value for _, value in logged] == pytest.approx(rates, rel=1e-6)  # float32 in the event file
    rows = read_rows(tmp_path)
    assert [(float(r["lr"]), float(r["lr_last"])) for r in rows] == [
        (rates[0], rates[STEPS_PER_EPOCH - 1]),
        (rates[STEPS_PER_EPOCH], rates[-1]),
    ]


def test_warmup_then_cosine_rises_over_its_warmup_and_ends_at_eta_min(tiny_mnist, tmp_path):
    train_tiny(
        tiny_mnist, tmp_path, "logger=none", "trainer.epochs=3", "scheduler=warmup_cosine", "steps.warmup=8"
    )
    with open(tmp_path / "lr_steps.csv") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    assert len(rates) == 3 * STEPS_PER_EPOCH
    assert rates[0] == pytest.approx(0.001 * 0.01) and rates[:8] == sorted(rates[:8])
    assert rates[8] == pytest.approx(0.001) and rates[8:] == sorted(rates[8:], reverse=True)
    assert rates[-1] < 0.001 * 0.01


def test_a_search_over_schedule_families_tunes_each_family_and_ranks_them(tiny_mnist, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = run_cli(
        "src.train",
        "--multirun",
        "hparams_search=schedule_families_optuna",
        "hydra.sweeper.n_trials=8",
        "trainer.epochs=2",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.sweeper.storage={storage}",
        *tiny_data_overrides(tiny_mnist),
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    study = optuna.load_study(study_name="schedule_families", storage=storage)
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(completed) == 8 and len({t.params["scheduler"] for t in completed}) >= 3
    own = {
        "step_lr": {"scheduler.step_size", "scheduler.gamma"},
        "exponential_lr": {"scheduler.gamma"},
        "warmup_cosine": {"steps.warmup_epochs"},
        "onecycle": {"scheduler.max_lr", "scheduler.pct_start"},
        "plateau": {"scheduler.factor", "scheduler.patience"},
    }
    for trial in completed:  # each family with its own parameters only
        family = trial.params["scheduler"]
        assert set(trial.params) == {"scheduler", *own[family]}, trial.params
        run = read_json(tmp_path / "sweep" / str(trial.number) / "metrics.json")
        assert f"scheduler={family}" in run["overrides"]
    best = {}
    for trial in completed:
        family = trial.params["scheduler"]
        best[family] = max(best.get(family, 0.0), trial.value)
    ranking = sorted(best, key=lambda family: -best[family])
    summary = next(
        line for line in sweep.stdout.splitlines() + sweep.stderr.splitlines() if "Best per scheduler" in line
    )
    assert summary.split("Best per scheduler: ")[1].split(", ")[0].startswith(f"{ranking[0]} ")
    listing = run_cli("src.compare", str(tmp_path / "sweep"), "--best-per", "scheduler")
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.strip().splitlines()[1:]
    assert len(rows) == len(best)
    assert [f"scheduler={family}" in row for row, family in zip(rows, ranking, strict=True)] == [True] * len(
        best
    )


def test_a_search_over_schedule_families_with_the_family_fixed_tunes_that_familys_parameters(
    tiny_mnist, tmp_path
):
    """`scheduler=step_lr` on the command line fixes the family: its own parameters are searched. Before,
    the family was read from the trial's parameters only, and the sweep ended with a KeyError traceback."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for family, searched in (("step_lr", {"scheduler.step_size", "scheduler.gamma"}), ("cosine", set())):
        sweep = run_cli(
            "src.train",
            "--multirun",
            "hparams_search=schedule_families_optuna",
            f"scheduler={family}",
            "hydra.sweeper.n_trials=2",
            "trainer.epochs=2",
            "logger=none",
            f"hydra.sweeper.study_name=fixed_{family}",
            f"hydra.sweep.dir={tmp_path / family}",
            f"hydra.sweeper.storage={storage}",
            *tiny_data_overrides(tiny_mnist),
        )
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        study = optuna.load_study(study_name=f"fixed_{family}", storage=storage)
        completed = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(completed) == 2 and all(set(t.params) == searched for t in completed)
        assert all(
            f"scheduler={family}"
            in read_json(tmp_path / family / str(t.number) / "metrics.json")["overrides"]
            for t in completed
        )


@pytest.mark.parametrize("option", sorted(p.stem for p in (REPO / "conf" / "scheduler").glob("*.yaml")))
def test_the_schedulers_said_to_set_their_own_rate_are_those_whose_start_ignores_optimizer_lr(
    tmp_path, option
):
    """SETS_ITS_OWN_LR checked against torch for each scheduler option: built on two optimizers whose lr
    differ, only those schedulers start both at the same rate, and only their runs given an optimizer.lr
    are told it is not used (naming arguments the scheduler's config has)."""
    from src.components import build_optimizer
    from src.schedule_config import SETS_ITS_OWN_LR, lr_not_used
    from src.schedules import build_scheduler, fill_in_steps

    cfg = compose_run([f"scheduler={option}"], tmp_path)
    fill_in_steps(cfg, n_train=640)
    starts = []
    for lr in (0.001, 0.002):
        optimizer = build_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)])
        optimizer.param_groups[0]["lr"] = lr
        build_scheduler(cfg.scheduler, optimizer)
        starts.append(optimizer.param_groups[0]["lr"])
    name = cfg.scheduler._target_.rsplit(".", 1)[-1]
    assert (starts[0] == starts[1]) == (name in SETS_ITS_OWN_LR), (option, starts)
    note = lr_not_used(cfg, [f"scheduler={option}", "optimizer.lr=0.002"])
    assert (note is not None) == (name in SETS_ITS_OWN_LR)
    assert lr_not_used(cfg, [f"scheduler={option}", "optimizer.weight_decay=0.1"]) is None
    if note:
        assert all(key in cfg.scheduler for key in SETS_ITS_OWN_LR[name])
        assert note.startswith("optimizer.lr=0.001 is not used: ") and "scheduler.max_lr" in note


def test_a_run_and_a_batched_grid_say_when_their_optimizer_lr_is_not_used(tiny_mnist, tmp_path):
    """A grid over optimizer.lr with OneCycleLR trains runs alike; each says so in its log, the batch once
    on the console; the StepLR runs of the same grid say nothing."""
    single = run_cli(
        "src.train",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=1",
        "logger=none",
        "scheduler=onecycle",
        "optimizer.lr=0.003",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert single.returncode == 0, single.stderr[-2000:]
    said = "optimizer.lr=0.003 is not used: OneCycleLR sets the learning rate itself"
    assert said in single.stdout + single.stderr
    assert said in (tmp_path / "run" / "train.log").read_text()
    grid = run_cli(
        "src.train",
        "--multirun",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=1",
        "logger=none",
        "hydra/launcher=batched",
        "scheduler=step_lr,onecycle",
        "optimizer.lr=0.001,0.003",
        f"hydra.sweep.dir={tmp_path / 'grid'}",
    )
    assert grid.returncode == 0, grid.stderr[-2000:]
    assert "jobs 2-3: optimizer.lr is not used" in grid.stdout + grid.stderr
    for job, lr in ((2, "0.001"), (3, "0.003")):
        assert f"optimizer.lr={lr} is not used" in (tmp_path / "grid" / str(job) / "train.log").read_text()
    for job in (0, 1):
        assert "is not used" not in (tmp_path / "grid" / str(job) / "train.log").read_text()
    summaries = [read_json(tmp_path / "grid" / str(job) / "metrics.json") for job in (2, 3)]
    assert summaries[0]["val_acc"] == summaries[1]["val_acc"]  # the two OneCycleLR runs trained alike


@pytest.mark.parametrize(
    "overrides",
    [[f"scheduler={p.stem}"] for p in sorted((REPO / "conf" / "scheduler").glob("*.yaml"))]
    + [[f"optimizer={p.stem}"] for p in sorted((REPO / "conf" / "optimizer").glob("*.yaml"))],
    ids=lambda overrides: overrides[0],
)
def test_an_optimizer_and_scheduler_built_again_from_one_config_are_built_once_by_hydra(
    tmp_path, monkeypatch, overrides
):
    """build_optimizer and build_scheduler keep the class partial Hydra made of a config (class_partial): a
    trial's probe and its own optimizer, or trials sharing an optimizer config, cost Hydra's instantiate once.
    What they build is what Hydra's instantiate of the config builds, a new object each time."""
    from hydra.utils import instantiate

    import src.components as components
    from src.config import EXECUTION_WHITELIST
    from src.schedules import build_scheduler, fill_in_steps

    cfg = compose_run(overrides, tmp_path)
    fill_in_steps(cfg, n_train=640)
    components._class_partial.cache_clear()
    made = []
    monkeypatch.setattr(components, "instantiate", lambda *a, **k: made.append(a[0]) or instantiate(*a, **k))
    built = []
    for _ in range(3):
        optimizer = components.build_optimizer(cfg.optimizer, [torch.zeros(2, requires_grad=True)])
        built.append((optimizer, build_scheduler(cfg.scheduler, optimizer)))
    assert len(made) == 2  # the optimizer's config and the scheduler's, once each
    by_hydra = instantiate(cfg.optimizer, _execution_whitelist_=EXECUTION_WHITELIST)(
        [torch.zeros(2, requires_grad=True)]
    )
    for optimizer, scheduler in built:
        assert type(optimizer) is type(by_hydra) and optimizer.defaults == by_hydra.defaults
        assert optimizer.param_groups[0]["lr"] == built[0][0].param_groups[0]["lr"]
        assert scheduler.state_dict() == built[0][1].state_dict() and scheduler.optimizer is optimizer
    assert len({id(optimizer) for optimizer, _ in built}) == len({id(s) for _, s in built}) == 3


def test_a_refused_optimizer_argument_is_refused_each_time_it_is_built(tmp_path):
    """A config whose class refuses its arguments is not kept as made: each build says so in one line."""
    from src.components import build_optimizer
    from src.errors import UserInputError

    cfg = compose_run(["optimizer=sgd", "optimizer.momentum=-1"], tmp_path)
    for _ in range(2):
        with pytest.raises(UserInputError, match="optimizer: torch.optim.SGD refused its arguments"):
            build_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)])
