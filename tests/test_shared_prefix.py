"""Runs that share their first epochs at lr0 train them once, with results equal to training from scratch."""

from pathlib import Path

import pytest
import torch
from helpers.cli import compose_run, read_json, run_cli
from helpers.sweeps import load_study, optuna_sweep_args
from helpers.training import read_rows, rows_without_timing, train_tiny
from omegaconf import OmegaConf

from src.shared_prefix import constant_lr_epochs


def run_tiny(tiny_mnist: Path, run_dir: Path, *overrides: str) -> dict:
    """Train in-process on the tiny MNIST without TensorBoard; the run's metrics.json."""
    train_tiny(tiny_mnist, run_dir, "logger=none", *overrides)
    return read_json(run_dir / "metrics.json")


@pytest.mark.parametrize("model", ["simple_net", "mlp"])  # the MLP's dropout draws from torch's global RNG
def test_a_run_that_reuses_epochs_ends_exactly_where_training_from_scratch_ends(tiny_mnist, tmp_path, model):
    cache = f"trainer.prefix_cache={tmp_path / 'cache'}"
    common = [f"model={model}", "trainer.epochs=4", "optimizer.lr=0.003"]
    first = run_tiny(tiny_mnist, tmp_path / "first", *common, "scheduler.step_size=3", cache)
    assert first["epochs_reused"] == 0
    decays_after_two = [*common, "scheduler.step_size=2", "scheduler.gamma=0.5"]
    reusing = run_tiny(tiny_mnist, tmp_path / "reusing", *decays_after_two, cache)
    scratch = run_tiny(tiny_mnist, tmp_path / "scratch", *decays_after_two)

    assert reusing["epochs_reused"] == 2 and reusing["reused_from"] == str(tmp_path / "first")
    assert rows_without_timing(tmp_path / "reusing") == rows_without_timing(tmp_path / "scratch")
    assert [float(r["lr"]) for r in rows_without_timing(tmp_path / "reusing")] == [
        0.003,
        0.003,
        0.0015,
        0.0015,
    ]
    weights = [torch.load(tmp_path / name / "model.pt") for name in ("reusing", "scratch")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert reusing["val_acc"] == scratch["val_acc"] and reusing["test_acc"] == scratch["test_acc"]
    # the reused epochs cost this run nothing
    assert [float(r["epoch_time_s"]) for r in read_rows(tmp_path / "reusing")][:2] == [0.0, 0.0]


def test_only_equal_settings_share_epochs(tiny_mnist, tmp_path):
    cache = f"trainer.prefix_cache={tmp_path / 'cache'}"
    run_tiny(tiny_mnist, tmp_path / "first", "trainer.epochs=2", "scheduler.step_size=2", cache)
    for other in ("trainer.seed=1", "optimizer.lr=0.002", "trainer.batch_size=32", "data.normalize=false"):
        run = run_tiny(tiny_mnist, tmp_path / other, "trainer.epochs=2", other, cache)
        assert run["epochs_reused"] == 0, other
    longer = run_tiny(tiny_mnist, tmp_path / "longer", "trainer.epochs=3", "scheduler.step_size=3", cache)
    assert longer["epochs_reused"] == 2  # another epoch budget still shares the first epochs


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (["scheduler=step_lr", "scheduler.step_size=3"], 3),
        (["scheduler=multistep_lr"], 2),  # milestones [2, 4]
        (["scheduler=exponential_lr"], 1),
        (["scheduler=cosine"], 1),
        (["scheduler=constant"], 6),
        (["scheduler=constant", "scheduler.factor=0.5", "scheduler.total_iters=2"], 0),
        (
            [
                "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR",
                "+scheduler.max_lr=0.01",
                "+scheduler.total_steps=6",
                "~scheduler.step_size",
                "~scheduler.gamma",
            ],
            0,
        ),
    ],
)
def test_constant_lr_epochs_follow_the_schedule(tmp_path, scheduler, expected):
    cfg = compose_run(["trainer.epochs=6", *scheduler], tmp_path)
    assert constant_lr_epochs(cfg) == expected, OmegaConf.to_yaml(cfg.scheduler)


def test_a_sweep_reuses_shared_epochs_and_finds_the_same_values(tiny_mnist, tmp_path):
    grid = [
        "hydra/sweeper/sampler=grid",
        "model=mlp",
        "trainer.epochs=3",
        "logger=none",
        "scheduler.step_size=choice(1,2,3)",
        "scheduler.gamma=0.5",
    ]
    values, reused, result_text = {}, {}, {}
    for name, extra in (("shared", []), ("scratch", ["trainer.prefix_cache=null"])):
        result = run_cli("src.train", *optuna_sweep_args(tiny_mnist, tmp_path / name, "sweep", *grid, *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        result_text[name] = result.stdout + result.stderr
        trials = load_study(tmp_path / name).trials
        values[name] = {t.params["scheduler.step_size"]: t.value for t in trials}
        reused[name] = [
            read_json(Path(t.user_attrs["run_dir"]) / "metrics.json")["epochs_reused"] for t in trials
        ]
    assert values["shared"] == values["scratch"] and len(values["shared"]) == 3
    assert reused["shared"][0] == 0 and sum(reused["shared"]) >= 2  # later trials share at least epoch 1
    assert reused["scratch"] == [0, 0, 0]
    assert f"Trials reused {sum(reused['shared'])} of their 9 epochs" in result_text["shared"]


def test_a_damaged_state_is_skipped_and_its_epochs_trained_again(tiny_mnist, tmp_path):
    cache = tmp_path / "cache"
    run_tiny(
        tiny_mnist,
        tmp_path / "first",
        "trainer.epochs=2",
        "scheduler.step_size=2",
        f"trainer.prefix_cache={cache}",
    )
    longest = sorted(cache.glob("*.pt"))[-1]
    longest.write_bytes(longest.read_bytes()[:100])  # a truncated file
    run = run_tiny(
        tiny_mnist,
        tmp_path / "again",
        "trainer.epochs=2",
        "scheduler.step_size=2",
        f"trainer.prefix_cache={cache}",
    )
    assert run["epochs_reused"] == 1  # the intact state after epoch 1
    assert rows_without_timing(tmp_path / "again") == rows_without_timing(tmp_path / "first")
    assert torch.load(longest, weights_only=True)["epochs"] == 2  # stored anew by the run that retrained it
