"""Training runs in-process on the tiny MNIST: every config option, the StepLR schedule, determinism."""

import csv
import math

import pytest
from helpers.cli import REPO, read_json
from helpers.training import read_rows, rows_without_timing, train_tiny

# Every option of every group that a user picks: a new YAML file is tested without touching this file.
GROUP_OPTIONS = [
    f"{group}={path.stem}"
    for group in ("model", "optimizer", "scheduler", "logger")
    for path in sorted((REPO / "conf" / group).glob("*.yaml"))
]
TINY_STEPS_PER_EPOCH = 16  # 1,000 training images in batches of 64


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_every_config_option_composes_and_trains_two_epochs(tiny_mnist, tmp_path, option):
    returned = train_tiny(tiny_mnist, tmp_path, option, "trainer.epochs=2")
    summary = read_json(tmp_path / "metrics.json")
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == 2
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (1000, 200, 300)
    assert summary["data_source"] == "mnist"
    assert returned == summary["val_acc"]
    assert 10 < summary["val_acc"] <= 100  # above chance on real digits
    assert (tmp_path / "model.pt").stat().st_size > 1000
    rows = read_rows(tmp_path)
    assert len(rows) == 2
    if (tmp_path / "lr_steps.csv").exists():  # a per-step schedule: its rate at every optimizer step
        with open(tmp_path / "lr_steps.csv") as f:
            steps = [float(row["lr"]) for row in csv.DictReader(f)]
        assert len(steps) == 2 * TINY_STEPS_PER_EPOCH
        for epoch, row in enumerate(rows):
            first, last = steps[epoch * TINY_STEPS_PER_EPOCH], steps[(epoch + 1) * TINY_STEPS_PER_EPOCH - 1]
            assert (float(row["lr"]), float(row["lr_last"])) == (first, last)
        assert len(set(steps)) > 2  # it changes within epochs
    else:
        assert all(row["lr"] == row["lr_last"] for row in rows)


@pytest.mark.parametrize(("step_size", "gamma"), [(1, 0.5), (2, 0.1), (3, 0.9), (5, 0.05)])
def test_recorded_lr_is_lr0_times_gamma_to_the_floor_of_t_over_step_size(
    tiny_mnist, tmp_path, step_size, gamma
):
    train_tiny(
        tiny_mnist,
        tmp_path,
        "logger=none",
        "trainer.epochs=6",
        "optimizer.lr=0.002",
        f"scheduler.step_size={step_size}",
        f"scheduler.gamma={gamma}",
    )
    rows = read_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        t = int(row["epoch"]) - 1  # epochs are printed from 1, the formula counts from 0
        assert math.isclose(float(row["lr"]), 0.002 * gamma ** (t // step_size), rel_tol=1e-12)


def test_metrics_files_hold_the_required_columns_and_fields(tiny_mnist, tmp_path):
    train_tiny(tiny_mnist, tmp_path, "trainer.epochs=2", "scheduler.gamma=0.5")
    rows = read_rows(tmp_path)
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "val_loss", "val_acc", "test_acc", "epoch_time_s"}
    summary = read_json(tmp_path / "metrics.json")
    for key in (
        "status",
        "val_acc",
        "best_val_acc",
        "test_acc",
        "epochs_completed",
        "wall_time_s",
        "data_source",
        "n_train",
        "n_val",
        "n_test",
        "seed",
        "overrides",
    ):
        assert key in summary, key
    assert summary["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert summary["val_acc"] == float(rows[-1]["val_acc"])
    assert "scheduler.gamma=0.5" in summary["overrides"]


def test_optimized_metric_chooses_what_the_run_returns(tiny_mnist, tmp_path):
    returned = train_tiny(tiny_mnist, tmp_path, "trainer.epochs=2", "optimized_metric=best_val_acc")
    assert returned == read_json(tmp_path / "metrics.json")["best_val_acc"]


def test_same_config_and_seed_give_identical_metrics(tiny_mnist, tmp_path):
    runs = []
    for name in ("first", "second"):
        train_tiny(tiny_mnist, tmp_path / name, "model=mlp", "trainer.epochs=2", "logger=none")
        runs.append(rows_without_timing(tmp_path / name))
    assert runs[0] == runs[1]
    train_tiny(tiny_mnist, tmp_path / "other_seed", "model=mlp", "trainer.epochs=2", "trainer.seed=1")
    assert rows_without_timing(tmp_path / "other_seed") != runs[0]
