"""hydra/launcher=batched: trials trained as one stacked model, each still a normal run.

Equivalence with runs alone: lr exact; losses and accuracies equal up to float rounding (the trials'
matmuls are one wider matmul), which training amplifies a little each step. On the tiny data one
validation image is 0.5 points and one test image 0.33 points; the tolerance allows one image either way,
and losses 0.5% relative (the largest difference seen over 2 epochs: 0.05%, the MLP's).
"""

import csv
import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from helpers.cli import (
    REPO,
    TINY_TEST,
    TINY_VAL,
    cli_env,
    compose_run,
    read_json,
    run_cli,
    tiny_data_overrides,
)
from helpers.servers import live_processes_of_session, process_state, processes_of_session
from helpers.sweeps import check_pruned_trials, load_study, optuna_sweep_args, run_pruning_sweep, trial_dirs
from helpers.workers import storage_for
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from optuna.trial import TrialState
from torch import nn

from hydra_plugins.batched_launcher import launcher as batched_launcher
from hydra_plugins.batched_launcher.deferral import BatchSettings, Deferred
from hydra_plugins.batched_launcher.launch_process import Inheritance, LaunchProcess
from hydra_plugins.optuna_pruning_sweeper.workers import Heartbeats
from src import batched_runs
from src.batched_runs import BatchedRun, Spread, jobs_named
from src.epoch_callbacks import RunContext
from src.errors import TrainingDiverged, UserInputError
from src.models import CNN, MLP, SimpleNet
from src.stacked_model import Block, StackedModel, stack_model
from src.trial_optimizers import TrialOptimizer, step_trials
from src.trial_processes import in_processes, split

VAL_TOLERANCE = 100.0 / TINY_VAL + 1e-9  # one validation image, in percent
TEST_TOLERANCE = 100.0 / TINY_TEST + 1e-9
LOSS_TOLERANCE = 5e-3  # relative


def rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_equivalent(batched: Path, alone: Path) -> None:
    got, expected = rows(batched), rows(alone)
    assert len(got) == len(expected) > 0
    for b, a in zip(got, expected, strict=True):
        assert b["epoch"] == a["epoch"]
        assert b["lr"] == a["lr"] and b["lr_last"] == a["lr_last"]  # exact
        assert math.isclose(b["train_loss"], a["train_loss"], rel_tol=LOSS_TOLERANCE)
        assert math.isclose(b["val_loss"], a["val_loss"], rel_tol=LOSS_TOLERANCE)
        assert abs(b["val_acc"] - a["val_acc"]) <= VAL_TOLERANCE
        assert abs(b["test_acc"] - a["test_acc"]) <= TEST_TOLERANCE
    assert read_json(batched / "metrics.json")["status"] == read_json(alone / "metrics.json")["status"]


# --- the pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "settings"),
    [
        (torch.optim.Adam, [{"lr": 1e-3}, {"lr": 3e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}]),
        (torch.optim.AdamW, [{"lr": 1e-3, "weight_decay": 0.01}, {"lr": 1e-2, "eps": 1e-6}]),
        (torch.optim.SGD, [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.5, "nesterov": True}]),
        (torch.optim.SGD, [{"lr": 0.05}, {"lr": 0.1, "weight_decay": 1e-3}]),
    ],
)
def test_the_fused_step_on_views_of_a_stack_equals_torchs_step_bit_for_bit(make, settings):
    """Stepped together (step_trials): the trials with the first setting, twice, share a kernel call."""
    settings = [settings[0], *settings, settings[0]]
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(3)]
    stack = [torch.stack([p.clone() for _ in settings]) for p in start]
    trials, alone, schedulers = [], [], []
    for k, setting in enumerate(settings):
        on_stack = make([p[k] for p in stack], fused=True, **setting)
        trials.append(TrialOptimizer(on_stack))
        separate = [p.clone().requires_grad_() for p in start]
        alone.append((separate, make(separate, fused=True, **setting)))
        # The lr changes every step, as a per-step scheduler changes it (exactly: both read the group).
        schedulers.append([torch.optim.lr_scheduler.ExponentialLR(o, 0.9) for o in (on_stack, alone[-1][1])])
    assert all(t.kernel is not None for t in trials)
    calls = []
    for _ in range(12):
        grads = [torch.randn_like(p) for p in stack]
        calls.append(len({t.shared_call() for t in trials}))
        step_trials(trials, [[g[k] for g in grads] for k in range(len(trials))])
        for k in range(len(trials)):
            params, optimizer = alone[k]
            for p, g in zip(params, grads, strict=True):
                p.grad = g[k].clone()
            optimizer.step()
            for scheduler in schedulers[k]:
                scheduler.step()
    for k, (params, _) in enumerate(alone):
        for stacked, separate in zip(stack, params, strict=True):
            assert torch.equal(stacked[k], separate.detach())
    assert calls == [1] + [len(settings) - 2] * 11  # torch's step() first, then one call per setting


def test_trials_that_stop_stepping_keep_their_adam_step_counts_while_the_others_count_on():
    """The step counts of the trials stepped together live in one tensor (one add a step); a trial left out
    (diverged) or dropped (finished: a narrower stack) keeps its own count, bit for bit as torch's step()."""
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(3)]
    stack = [torch.stack([p.clone() for _ in range(3)]) for p in start]
    trials = [TrialOptimizer(torch.optim.Adam([p[k] for p in stack], lr=1e-2, fused=True)) for k in range(3)]
    alone = []
    for _ in range(3):
        separate = [p.clone().requires_grad_() for p in start]
        alone.append((separate, torch.optim.Adam(separate, lr=1e-2, fused=True)))
    stepping_per_step = [[0, 1, 2]] * 3 + [[0, 2]] * 2 + [[2]] * 2 + [[0, 1, 2]]
    for number, stepping in enumerate(stepping_per_step, start=1):
        grads = [torch.randn_like(p) for p in stack]
        step_trials([trials[k] for k in stepping], [[g[k] for g in grads] for k in stepping])
        for k in stepping:
            params, optimizer = alone[k]
            for p, g in zip(params, grads, strict=True):
                p.grad = g[k].clone()
            optimizer.step()
        counts = [step for k in stepping for step in trials[k].buffers["step"]]
        if number > 1:  # the first step is torch's step(), which makes the counts; then: one add
            assert all(step._base is counts[0]._base is not None for step in counts)
    for k, (params, optimizer) in enumerate(alone):
        for stacked, separate in zip(stack, params, strict=True):
            assert torch.equal(stacked[k], separate.detach())
        assert [float(s) for s in trials[k].buffers["step"]] == [
            float(optimizer.state[p]["step"]) for p in params
        ]
    assert [float(trials[k].buffers["step"][0]) for k in range(3)] == [6.0, 4.0, 8.0]


@pytest.mark.parametrize("model_class", [SimpleNet, MLP, CNN])
def test_a_stacked_model_computes_each_trials_forward_with_the_dropout_masks_of_a_run_alone(model_class):
    images = torch.rand(16, 28, 28)
    torch.manual_seed(0)
    model = model_class()
    stacked, how = stack_model(model, 3, images[:4])
    assert how == "layers"
    for k, value in enumerate(torch.linspace(-0.01, 0.01, 3)):  # each trial its own weights
        for param in stacked.params.values():
            param.data[k] += value
    for k in range(3):
        alone = model_class()
        alone.load_state_dict(stacked.trial_state(k))
        alone.train()
        torch.manual_seed(5)
        expected = alone(images)
        torch.manual_seed(5)
        assert torch.allclose(stacked(images)[k], expected, atol=1e-5)


@pytest.mark.parametrize("model_class", [SimpleNet, MLP, CNN])
def test_each_trials_loss_and_gradients_in_a_stack_are_those_of_its_model_trained_alone(model_class):
    """SimpleNet's and the MLP's are written out (dense_backward), the CNN's come from autograd: each
    trial's must be what autograd gives its own model on the same batch (float rounding only)."""
    images, labels = torch.rand(32, 28, 28), torch.randint(0, 10, (32,))
    torch.manual_seed(0)
    stacked, _ = stack_model(model_class(), 3, images[:4])
    assert stacked.dense == (model_class is not CNN)
    for k, value in enumerate(torch.linspace(-0.05, 0.05, 3)):  # each trial its own weights
        for param in stacked.params.values():
            param.data[k] += value
    torch.manual_seed(5)  # the dropout masks: one draw, every trial's
    losses, grads = stacked.loss_and_grads(images, labels)
    assert [g.shape for g in grads] == [p.shape for p in stacked.params.values()]
    assert all(g.is_contiguous() for g in grads)
    for k in range(3):
        alone = model_class()
        alone.load_state_dict(stacked.trial_state(k))
        alone.train()
        torch.manual_seed(5)
        loss = nn.functional.cross_entropy(alone(images), labels)
        loss.backward()
        assert torch.allclose(losses[k], loss.detach(), rtol=1e-5)
        for grad, (name, param) in zip(grads, alone.named_parameters(), strict=True):
            assert torch.allclose(grad[k], param.grad, rtol=1e-4, atol=1e-6), name


def flatten_first() -> nn.Module:
    """A chain that begins with Flatten: trials of several seeds stack it through vmap."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


@pytest.mark.parametrize(
    ("model_class", "expected_how"),
    [(SimpleNet, "layers"), (MLP, "layers"), (CNN, "layers"), (flatten_first, "vmap")],
)
def test_trials_of_several_seeds_stack_each_with_its_seeds_weights_images_and_dropout_masks(
    model_class, expected_how
):
    """Stack order [seed 0, seed 0, seed 1]: two blocks. Each trial's logits, loss and gradients must be
    those of its model alone, started from its seed, fed its seed's images and drawing dropout masks from
    where its seed's generator stood after the weights were drawn (dense_backward for SimpleNet and the MLP,
    autograd for the CNN and through vmap)."""
    seeds = [0, 0, 1]
    images = {seed: torch.rand(32, 28, 28) for seed in (0, 1)}
    labels = {seed: torch.randint(0, 10, (32,)) for seed in (0, 1)}
    models, after_init = {}, {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        models[seed] = model_class()
        after_init[seed] = torch.get_rng_state()
    _, how = stack_model(models[0], 3, images[0][:4], several_seeds=True)
    assert how == expected_how
    stacked = StackedModel([models[seed] for seed in seeds], how)
    for k, seed in enumerate(seeds):  # each trial starts from its seed's weights
        state = stacked.trial_state(k)
        assert all(torch.equal(state[name], value) for name, value in models[seed].state_dict().items())
    for k, value in enumerate(torch.linspace(-0.01, 0.01, 3)):  # then each trial its own weights
        for param in stacked.params.values():
            param.data[k] += value
    masks = {seed: torch.Generator() for seed in (0, 1)}
    for seed, generator in masks.items():
        generator.set_state(after_init[seed])
    blocks = [Block(2, images[0], masks[0]), Block(1, images[1], masks[1])]
    per_trial_labels = torch.stack([labels[seed] for seed in seeds], dim=1)
    torch.manual_seed(99)  # torch's own generator must not matter
    losses, grads = stacked.loss_and_grads(blocks, per_trial_labels)
    for k, seed in enumerate(seeds):
        alone = model_class()
        alone.load_state_dict(stacked.trial_state(k))
        alone.train()
        torch.set_rng_state(after_init[seed])  # a block's trials share its masks, drawn once
        loss = nn.functional.cross_entropy(alone(images[seed]), labels[seed])
        loss.backward()
        assert torch.allclose(losses[k], loss.detach(), rtol=1e-5), k
        for grad, (name, param) in zip(grads, alone.named_parameters(), strict=True):
            assert torch.allclose(grad[k], param.grad, rtol=1e-4, atol=1e-6), (k, name)
    # the next forward draws each block's next masks, as each seed's run alone draws its next ones
    stacked.train(True)
    again = stacked(blocks)
    for k, seed in enumerate(seeds):
        alone = model_class()
        alone.load_state_dict(stacked.trial_state(k))
        alone.train()
        torch.set_rng_state(after_init[seed])
        alone(images[seed])
        assert torch.allclose(again[k], alone(images[seed]), atol=1e-5), k


def test_a_model_with_running_statistics_cannot_be_stacked():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.BatchNorm1d(10))
    stacked, why = stack_model(model, 2, torch.rand(4, 28, 28))
    assert stacked is None and "running statistics" in why


def test_a_model_whose_forward_is_not_its_layers_in_order_is_stacked_through_vmap():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(784, 784), nn.Linear(784, 10)

        def forward(self, x):
            x = x.reshape(-1, 784)
            return self.b(x + torch.relu(self.a(x)))

    images = torch.rand(8, 28, 28)
    stacked, how = stack_model(Residual(), 2, images)
    assert how == "vmap"
    assert stacked(images).shape == (2, 8, 10)


def test_a_jobs_config_derived_from_the_batchs_first_equals_the_config_hydra_composes():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.batched_launcher.composing import JobComposer

    sweep = ["hparams_search=steplr_optuna", "hydra/launcher=batched", "trainer.epochs=3"]
    jobs = [
        ["scheduler.step_size=1", "scheduler.gamma=0.5", "++hydra.job.env_set.HYDRA_OPTUNA_TRIAL_ID=1"],
        ["scheduler.step_size=3", "scheduler.gamma=0.07", "++hydra.job.env_set.HYDRA_OPTUNA_TRIAL_ID=2"],
        ["scheduler=onecycle", "scheduler.max_lr=0.01", "++hydra.job.env_set.HYDRA_OPTUNA_TRIAL_ID=3"],
        ["scheduler=onecycle", "scheduler.max_lr=0.02", "++hydra.job.env_set.HYDRA_OPTUNA_TRIAL_ID=4"],
        ["scheduler=onecycle", "+scheduler.three_phase=true", "++hydra.job.env_set.HYDRA_OPTUNA_TRIAL_ID=5"],
        ["scheduler.step_size=2", "+optimizer.betas=[0.8,0.9]", "++hydra.job.env_set.X=6"],
    ]
    task = ["hparams_search=steplr_optuna", "trainer.epochs=3"]  # a sweeper repeats them in every job
    jobs = [[*task, *job] for job in jobs]
    with initialize_config_dir(config_dir=str(REPO / "conf")):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", overrides=sweep, run_mode=RunMode.MULTIRUN)
        composer = JobComposer(loader, master)
        for job in jobs:
            derived = composer.compose(job)
            composed = loader.load_sweep_config(master, job)
            assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(composed)
    # Jobs 2 and 4 take the previous job's config with their values; 3 (another scheduler), 5 (a key added)
    # and 6 (other keys) are composed by Hydra.
    assert composer.derived == 2


# --- trials inside one group --------------------------------------------------------------------------


class PruneTrials(optuna.pruners.BasePruner):
    """Prunes the trials with these numbers at their first report."""

    def __init__(self, numbers: set[int]) -> None:
        self.numbers = numbers

    def prune(self, study, trial) -> bool:
        return trial.number in self.numbers


def in_process_runs(tiny_mnist, tmp_path, overrides_per_run, study=None):
    runs = []
    for index, overrides in enumerate(overrides_per_run):
        run_dir = tmp_path / f"run{index}"
        cfg = compose_run([*tiny_data_overrides(tiny_mnist), "logger=none", *overrides], run_dir)
        trial = optuna.Trial(study, study.ask()._trial_id) if study else None
        context = RunContext(run_dir, str(index), list(overrides), trial, optuna.logging.get_logger("test"))
        runs.append(BatchedRun(cfg, context))
    return runs


def test_a_run_loads_its_data_for_the_batch_as_it_is_prepared_and_a_bad_root_is_left_to_its_group(
    tiny_mnist, tmp_path, monkeypatch
):
    """DeferredJob.prepare() loads the run's data while the sweep's process runs the batch's later jobs;
    data that cannot be loaded is not its failure (its group's training meets it and says so)."""
    monkeypatch.setattr(batched_runs, "SWEEP_DATA", batched_runs.LoadedData())
    [run, same_data] = in_process_runs(tiny_mnist, tmp_path, [["optimizer.lr=0.1"], ["optimizer.lr=0.2"]])
    run.load_data_and_check_early()
    same_data.load_data_and_check_early()
    [loaded] = batched_runs.SWEEP_DATA.splits.values()  # once for both
    assert len(loaded.train) > 0
    no_data = [["data.offline_fallback=false"]]  # and no download: no data at all
    [nowhere] = in_process_runs(tmp_path / "no data here", tmp_path / "other", no_data)
    nowhere.load_data_and_check_early()
    assert len(batched_runs.SWEEP_DATA.splits) == 1
    with pytest.raises(UserInputError, match="MNIST"):  # what its group meets
        batched_runs.SWEEP_DATA.get(nowhere.cfg, torch.device("cpu"))


@pytest.mark.parametrize("seeds", [[0, 0, 0, 0], [1, 0, 1, 0]], ids=["one seed", "two seeds"])
def test_a_pruned_trial_and_a_diverging_one_leave_the_group_and_the_others_train_on(
    tiny_mnist, tmp_path, seeds
):
    """With two seeds the stack is [1, 3 | 0, 2] (a block per seed); after the first epoch each block keeps
    one trial, which must train on as it would alone."""
    study = optuna.create_study(direction="maximize", pruner=PruneTrials({1}))
    settings = [
        ["optimizer=sgd", "optimizer.lr=0.05"],
        ["optimizer=sgd", "optimizer.lr=0.01"],  # pruned after its first epoch
        ["optimizer=sgd", "optimizer.lr=1e38"],  # diverges in its first epoch (loss nan at batch 2)
        ["optimizer=sgd", "optimizer.lr=0.02", "scheduler=onecycle"],
    ]
    settings = [[*setting, f"trainer.seed={seed}"] for setting, seed in zip(settings, seeds, strict=True)]
    runs = in_process_runs(
        tiny_mnist,
        tmp_path,
        [[*s, "trainer.epochs=3", "trainer.stacking=always", "prune_from=first_epoch"] for s in settings],
        study,
    )
    outcomes = BatchedRun.run_together(runs, BatchSettings())

    assert isinstance(outcomes[1], optuna.TrialPruned)
    assert isinstance(outcomes[2], TrainingDiverged) and "diverged" in str(outcomes[2])
    pruned, diverged = (
        read_json(tmp_path / "run1" / "metrics.json"),
        read_json(tmp_path / "run2" / "metrics.json"),
    )
    assert pruned["status"] == "pruned" and pruned["epochs_completed"] == 1
    assert (tmp_path / "run1" / "model.pt").exists()  # as a pruned run alone: its weights are kept
    assert diverged["status"] == "failed" and diverged["epochs_completed"] == 0
    assert not (tmp_path / "run2" / "model.pt").exists()
    for index in (0, 3):
        assert isinstance(outcomes[index], float)
        summary = read_json(tmp_path / f"run{index}" / "metrics.json")
        assert summary["status"] == "completed" and summary["epochs_completed"] == 3
        assert summary["val_acc"] == outcomes[index]
    assert study.trials[0].user_attrs["epochs_completed"] == 3
    assert study.trials[1].user_attrs["status"] == "pruned"

    # The survivors trained exactly as they would have alone, after their group lost two trials.
    alone = in_process_runs(
        tiny_mnist, tmp_path / "alone", [[*settings[i], "trainer.epochs=3"] for i in (0, 3)]
    )
    from src.run import train

    for run, index in zip(alone, (0, 3), strict=True):
        train(run.cfg, run.context)
        assert_equivalent(tmp_path / f"run{index}", run.context.run_dir)
    assert (tmp_path / "run3" / "lr_steps.csv").read_text() == (
        alone[1].context.run_dir / "lr_steps.csv"
    ).read_text()


def test_a_trial_whose_metrics_json_cannot_be_written_fails_alone_and_its_study_trial_says_why(
    tiny_mnist, tmp_path
):
    """Before, the error of writing one trial's metrics.json (a full disk) left the batch's other trials
    without their outcomes."""
    study = optuna.create_study(direction="maximize")
    settings = [
        [f"optimizer.lr={lr}", "trainer.epochs=2", "trainer.stacking=always"] for lr in (1e-3, 2e-3, 3e-3)
    ]
    runs = in_process_runs(tiny_mnist, tmp_path, settings, study)
    (tmp_path / "run1" / "metrics.json").mkdir(parents=True)  # a directory where the file goes: it fails
    outcomes = BatchedRun.run_together(runs, BatchSettings())

    assert isinstance(outcomes[1], IsADirectoryError)
    assert str(tmp_path / "run1" / "metrics.json") in str(outcomes[1])  # named by the file, not a temporary
    assert study.trials[1].user_attrs["status"] == "failed"  # the study has the outcome metrics.json lacks
    assert not list((tmp_path / "run1").glob(".*.tmp"))
    for index in (0, 2):
        summary = read_json(tmp_path / f"run{index}" / "metrics.json")
        assert summary["status"] == "completed" and outcomes[index] == summary["val_acc"]


def test_a_trial_whose_class_refuses_its_arguments_fails_alone_and_the_others_train_stacked(
    tiny_mnist, tmp_path
):
    settings = [
        ["optimizer.momentum=-1"],  # torch.optim.SGD refuses it
        ["optimizer.lr=0.05"],
        ["optimizer.lr=0.01"],
    ]
    runs = in_process_runs(
        tiny_mnist,
        tmp_path,
        [["optimizer=sgd", *s, "trainer.epochs=1", "trainer.stacking=always"] for s in settings],
    )
    outcomes = BatchedRun.run_together(runs, BatchSettings())
    assert isinstance(outcomes[0], UserInputError)
    assert str(outcomes[0]) == "optimizer: torch.optim.SGD refused its arguments: Invalid momentum value: -1"
    assert not (tmp_path / "run0" / "metrics.json").exists()
    for index in (1, 2):
        assert isinstance(outcomes[index], float)
        assert read_json(tmp_path / f"run{index}" / "metrics.json")["status"] == "completed"
    # A model that refuses its arguments is the whole group's: each of its trials fails with it.
    refused = in_process_runs(
        tiny_mnist,
        tmp_path / "model",
        [
            ["+model.foo=2", f"optimizer.lr={lr}", "trainer.epochs=1", "trainer.stacking=always"]
            for lr in (1, 2)
        ],
    )
    for outcome in BatchedRun.run_together(refused, BatchSettings()):
        assert isinstance(outcome, UserInputError) and str(outcome).startswith("model: src.models.SimpleNet")


def test_runs_are_checked_against_their_data_as_they_are_prepared_and_the_group_does_not_check_again(
    tiny_mnist, tmp_path, monkeypatch
):
    """load_data_and_check_early() (DeferredJob.prepare) also fills in each run's steps and finds its
    constant epochs, building its optimizer and scheduler on a probe, before the batch is whole; one its
    optimizer refuses still fails alone, once its group trains."""
    monkeypatch.setattr(batched_runs, "SWEEP_DATA", batched_runs.LoadedData())
    settings = [["optimizer.momentum=-1"], ["optimizer.lr=0.05"], ["optimizer.lr=0.01"]]
    runs = in_process_runs(
        tiny_mnist,
        tmp_path,
        [["optimizer=sgd", *s, "trainer.epochs=1", "trainer.stacking=always"] for s in settings],
    )
    for run in runs:
        run.load_data_and_check_early()
    [data] = batched_runs.SWEEP_DATA.splits.values()
    assert runs[1].cfg.steps.per_epoch == math.ceil(len(data.train) / runs[1].cfg.trainer.batch_size)
    assert runs[1].constant_epochs == runs[2].constant_epochs == 1
    assert isinstance(runs[0].checked[1], UserInputError)

    def checked_again(cfg):
        raise AssertionError("checked again once the batch was whole")

    monkeypatch.setattr(batched_runs, "checked_constant_epochs", checked_again)
    outcomes = BatchedRun.run_together(runs, BatchSettings())
    assert str(outcomes[0]) == "optimizer: torch.optim.SGD refused its arguments: Invalid momentum value: -1"
    for index in (1, 2):
        assert read_json(tmp_path / f"run{index}" / "metrics.json")["status"] == "completed"


# --- through the CLI ----------------------------------------------------------------------------------


def grid(tiny_mnist, sweep_dir, *extra):
    return [
        "--multirun",
        f"hydra.sweep.dir={sweep_dir}",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=2",
        "scheduler=step_lr,onecycle",
        "optimizer.lr=0.001,0.003",
        *extra,
    ]


@pytest.mark.parametrize(
    ("model", "processes"),
    [
        ("simple_net", 1),
        ("simple_net", 2),
        pytest.param("mlp", 1, marks=pytest.mark.slow),
        pytest.param("cnn", 1, marks=pytest.mark.slow),
    ],
)
def test_a_grid_trained_stacked_matches_the_same_grid_trained_one_run_at_a_time(
    tiny_mnist, tmp_path, model, processes
):
    extra = [f"model={model}", "logger=tensorboard"]
    stacked = [
        *extra,
        "hydra/launcher=batched",
        "trainer.stacking=always",
        f"hydra.launcher.processes={processes}",
    ]
    batched = run_cli("src.train", *grid(tiny_mnist, tmp_path / "b", *stacked))
    assert batched.returncode == 0, batched.stderr[-3000:]
    together = 4 // processes
    output = batched.stderr + batched.stdout
    assert f"{together} trials train stacked (layers)" in output
    for part in ["jobs 0-3"] if processes == 1 else ["jobs 0-1", "jobs 2-3"]:  # whose epoch each line is
        assert f"epoch 1 ({part}): {together} trials in" in output
    basic = run_cli("src.train", *grid(tiny_mnist, tmp_path / "a", *extra))
    assert basic.returncode == 0, basic.stderr[-3000:]
    for b, a in zip(trial_dirs(tmp_path / "b"), trial_dirs(tmp_path / "a"), strict=True):
        assert b.name == a.name
        assert_equivalent(b, a)
        assert files_but_events(b) == files_but_events(a)
        assert len([p for p in b.iterdir() if p.name.startswith("events.out.tfevents")]) == 1
        overrides = (b / ".hydra" / "overrides.yaml").read_text().replace("- trainer.stacking=always\n", "")
        overrides = overrides.replace(f"- hydra.launcher.processes={processes}\n", "")
        assert overrides == (a / ".hydra" / "overrides.yaml").read_text()
        log = (b / "train.log").read_text()  # its own lines only
        assert f"trained stacked with {together - 1} other trial" in log
        assert log.count("epoch 1/2") == log.count("epoch 2/2") == 1

    compare = run_cli("src.compare", str(tmp_path / "b"), "--json")
    assert compare.returncode == 0, compare.stderr
    assert len(json.loads(compare.stdout)) == 4


@pytest.mark.parametrize("processes", [1, 2])
def test_a_grid_over_seeds_trains_stacked_and_each_trial_matches_its_run_alone(
    tiny_mnist, tmp_path, processes
):
    """The MLP (dropout) over 2 seeds x 2 learning rates: one stack of 4 trials in a block per seed (or a
    process per seed), each trial with its own seed's weights, shuffles and dropout masks."""
    sweep = [
        "--multirun",
        *tiny_data_overrides(tiny_mnist),
        "model=mlp",
        "trainer.epochs=2",
        "logger=none",
        "trainer.seed=3,1",
        "optimizer.lr=0.001,0.003",
    ]
    batched = run_cli(
        "src.train",
        *sweep,
        f"hydra.sweep.dir={tmp_path / 'b'}",
        "hydra/launcher=batched",
        "trainer.stacking=always",
        f"hydra.launcher.processes={processes}",
    )
    assert batched.returncode == 0, batched.stderr[-3000:]
    output = batched.stdout + batched.stderr
    if processes == 1:
        assert "4 trials train stacked (layers, 2 seeds), 2 epochs: jobs 2, 3, 0, 1" in output
    else:  # sorted by seed, so each process trains one seed's trials
        assert "2 trials train stacked (layers), 2 epochs: jobs 2-3" in output
        assert "2 trials train stacked (layers), 2 epochs: jobs 0-1" in output
    basic = run_cli("src.train", *sweep, f"hydra.sweep.dir={tmp_path / 'a'}")
    assert basic.returncode == 0, basic.stderr[-3000:]
    seeds = []
    for b, a in zip(trial_dirs(tmp_path / "b"), trial_dirs(tmp_path / "a"), strict=True):
        assert b.name == a.name
        seeds.append(read_json(b / "metrics.json")["seed"])
        assert seeds[-1] == read_json(a / "metrics.json")["seed"]
        assert_equivalent(b, a)
    assert seeds == [3, 3, 1, 1]


def test_a_seed_per_job_through_hydras_resolver_trains_each_trial_with_its_own_seed(tiny_mnist, tmp_path):
    """`trainer.seed=${hydra:job.num}` reads Hydra's config, which is each job's only while run_job runs it:
    the batch would train every trial with the last job's seed (all stacked together, all recorded as 1)."""
    sweep = [*tiny_data_overrides(tiny_mnist), "trainer.epochs=1", "logger=none", "optimizer.lr=0.001,0.003"]
    sweep += ["--multirun", "trainer.seed=${hydra:job.num}"]
    batched = run_cli(
        "src.train",
        *sweep,
        f"hydra.sweep.dir={tmp_path / 'b'}",
        "hydra/launcher=batched",
        "trainer.stacking=always",
    )
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert "2 trials train stacked (layers, 2 seeds)" in batched.stdout + batched.stderr  # a block per seed
    basic = run_cli("src.train", *sweep, f"hydra.sweep.dir={tmp_path / 'a'}")
    assert basic.returncode == 0, basic.stderr[-3000:]
    for number, (b, a) in enumerate(zip(trial_dirs(tmp_path / "b"), trial_dirs(tmp_path / "a"), strict=True)):
        assert read_json(b / "metrics.json")["seed"] == read_json(a / "metrics.json")["seed"] == number
        assert_equivalent(b, a)
        assert "seed: ${hydra:job.num}" in (b / ".hydra" / "config.yaml").read_text()  # as Hydra saved it


def files_but_events(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if not p.name.startswith("events.out.tfevents")}


@pytest.mark.parametrize(
    ("kind", "processes"),
    [("sqlite", 1), ("sqlite", 2), pytest.param("postgres", 2, marks=pytest.mark.slow)],
)
def test_an_optuna_sweep_with_the_batched_launcher_tells_each_trial_its_own_value(
    tiny_mnist, tmp_path, request, kind, processes
):
    """With processes=2, half of each batch trains in a forked child with its own study connection."""
    storage, load = storage_for(kind, tmp_path, request)
    args = [
        *optuna_sweep_args(tiny_mnist, tmp_path, "sweep"),
        storage,  # the last value of hydra.sweeper.storage wins
        "hydra/launcher=batched",
        f"hydra.launcher.processes={processes}",
        "trainer.stacking=always",
        "hydra.sweeper.n_jobs=4",
        "hydra.sweeper.n_trials=8",
        "trainer.epochs=2",
        "logger=none",
        "hydra.verbose=hydra_plugins.batched_launcher.launcher",
    ]
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    # started by src/train.py before Hydra composed the config
    assert "adopted the launch process started before Hydra" in result.stderr + result.stdout
    if processes == 2:
        assert (result.stderr + result.stdout).count("4 trials train in 2 processes (2 + 2 trials") == 2
    study = load()
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(sorted(t.intermediate_values) == [1, 2] for t in completed)  # reported by the child too
    assert len(completed) == 8
    assert (
        len({(t.params["scheduler.step_size"], round(t.params["scheduler.gamma"], 9)) for t in completed})
        == 8
    )
    for trial in completed:
        summary = read_json(REPO / trial.user_attrs["run_dir"] / "metrics.json")  # absolute outside REPO
        assert trial.value == summary["val_acc"]
        # what the resumed sweep would tell the study, had this one been killed before it did
        assert trial.system_attrs["job_end"] == {"state": "COMPLETE", "values": [trial.value], "reason": None}
        assert summary["hyperparameters"]["scheduler.gamma"] == pytest.approx(trial.params["scheduler.gamma"])
    compare = run_cli("src.compare", "--study", "steplr", "--storage", storage.split("=", 1)[1])
    assert compare.returncode == 0, compare.stderr
    assert compare.stdout.count("completed") >= 8


@pytest.mark.parametrize("processes", [1, 2])
def test_pruning_inside_batches_through_the_cli(tiny_mnist, tmp_path, processes):
    run_pruning_sweep(
        tiny_mnist,
        tmp_path,
        "sweep",
        "hydra/launcher=batched",
        "hydra.sweeper.n_jobs=4",
        f"hydra.launcher.processes={processes}",
        "trainer.stacking=always",
    )
    check_pruned_trials(tmp_path, "sweep")


def test_max_batch_splits_a_batch_and_an_unstackable_setting_trains_one_at_a_time(tiny_mnist, tmp_path):
    split = run_cli(
        "src.train",
        *grid(
            tiny_mnist,
            tmp_path / "split",
            "logger=none",
            "hydra/launcher=batched",
            "hydra.launcher.max_batch=3",
            "trainer.stacking=always",
        ),
    )
    assert split.returncode == 0, split.stderr[-3000:]
    output = split.stderr + split.stdout
    assert "groups of up to 3 (hydra.launcher.max_batch=3)" in output
    assert "3 trials train stacked" in output and "1 trial trains alone" not in output
    assert all(read_json(d / "metrics.json")["status"] == "completed" for d in trial_dirs(tmp_path / "split"))

    never = run_cli(
        "src.train",
        *grid(
            tiny_mnist, tmp_path / "never", "logger=none", "hydra/launcher=batched", "trainer.stacking=never"
        ),
    )
    assert never.returncode == 0, never.stderr[-3000:]
    assert "4 trials train one at a time: trainer.stacking=never" in never.stderr + never.stdout
    batch_sizes = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'batch_sizes'}",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=1",
        "logger=none",
        "trainer.batch_size=32,64",
        "hydra/launcher=batched",
    )
    assert batch_sizes.returncode == 0, batch_sizes.stderr[-3000:]
    assert (batch_sizes.stderr + batch_sizes.stdout).count("1 trial trains alone") == 2
    for run_dir in [*trial_dirs(tmp_path / "never"), *trial_dirs(tmp_path / "batch_sizes")]:
        assert read_json(run_dir / "metrics.json")["status"] == "completed"


LONG_EPOCHS = 200


def sweep_in_the_middle_of_a_batch(
    tiny_mnist, tmp_path, trials: int, *extra: str
) -> tuple[subprocess.Popen, list[str]]:
    """A batched sweep of one batch of `trials` long trials, in a session of its own, once every trial has
    finished 2 epochs; the process and its arguments (its stderr goes to sweep.stderr). An epoch of the tiny
    data takes about 0.04 s, and the parts of a batch start up to a second apart on a loaded host: 200
    epochs leave seconds to spare."""
    args = optuna_sweep_args(
        tiny_mnist,
        tmp_path,
        "sweep",
        "hydra/launcher=batched",
        f"hydra.sweeper.n_jobs={trials}",
        f"hydra.sweeper.n_trials={trials}",
        f"trainer.epochs={LONG_EPOCHS}",
        "logger=none",
        "trainer.stacking=always",
        *extra,
    )
    with (tmp_path / "sweep.stderr").open("w") as stderr:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "src.train", *args],
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    csv_files = [tmp_path / "sweep" / str(n) / "metrics.csv" for n in range(trials)]
    deadline = time.monotonic() + 300
    while not all(f.exists() and len(f.read_text().splitlines()) >= 3 for f in csv_files):
        assert sweep.poll() is None and time.monotonic() < deadline, "the batch never got going"
        time.sleep(0.2)
    return sweep, args


@pytest.mark.slow
def test_a_batched_sweep_killed_in_the_middle_of_a_batch_resumes(tiny_mnist, tmp_path):
    sweep, args = sweep_in_the_middle_of_a_batch(tiny_mnist, tmp_path, 4)
    # The batch trains in the launch process; the sweep's process never loads torch.
    assert not loads_torch(sweep.pid)
    assert any(loads_torch(pid) for pid in live_processes_of_session(sweep.pid) if pid != sweep.pid)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert all(not (d / "metrics.json").exists() for d in trial_dirs(tmp_path / "sweep"))  # killed mid-batch

    killed = load_study(tmp_path).trials
    assert [t.state for t in killed] == [TrialState.RUNNING] * 4

    # The same command, in a new sweep directory as a rerun gets: the killed trials' parameters run again.
    resumed = run_cli("src.train", *args, f"hydra.sweep.dir={tmp_path / 'second'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = load_study(tmp_path).trials
    assert all(t.state == TrialState.FAIL and t.user_attrs["interrupted"] for t in after[:4])
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert sorted(str(t.params) for t in complete) == sorted(str(t.params) for t in killed)
    assert all(
        read_json(d / "metrics.json")["status"] == "completed" for d in trial_dirs(tmp_path / "second")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group", "line"),
    [
        (signal.SIGINT, True, "interrupted (Ctrl-C)"),  # as a terminal sends it
        # `timeout`, a service manager: before, every process of the batch died at once, no files written
        (signal.SIGTERM, True, "interrupted (SIGTERM)"),
        (signal.SIGTERM, False, "interrupted (SIGTERM)"),  # `kill PID`
    ],
)
def test_ctrl_c_or_sigterm_on_a_batched_sweep_ends_each_trial_of_the_batch_as_interrupted(
    tiny_mnist, tmp_path, signum, to_group, line
):
    sweep, _ = sweep_in_the_middle_of_a_batch(tiny_mnist, tmp_path, 4, "hydra.launcher.processes=2")
    # to the group: the sweep, its launch process and that one's child; else the sweep's process forwards it
    (os.killpg if to_group else os.kill)(sweep.pid, signum)
    assert sweep.wait(120) == -signal.SIGINT  # as Python ends on an uncaught Ctrl-C
    stderr = (tmp_path / "sweep.stderr").read_text()
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == line, stderr[-3000:]
    deadline = time.monotonic() + 60
    while live_processes_of_session(sweep.pid):
        assert time.monotonic() < deadline, "a process of the batch outlived the sweep"
        time.sleep(0.2)
    for number in range(4):
        summary = read_json(tmp_path / "sweep" / str(number) / "metrics.json")
        assert summary["status"] == "interrupted" and 2 <= summary["epochs_completed"] < LONG_EPOCHS
        assert (tmp_path / "sweep" / str(number) / "model.pt").exists()
    batch = load_study(tmp_path).trials[:4]  # (the sweep queued their parameters again for a resume)
    assert all(t.state == TrialState.FAIL and t.user_attrs["status"] == "interrupted" for t in batch)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("max_batch=0", "max_batch=0 is not allowed: an integer >= 1, or null (as many as fit)"),
        ("processes=0", "processes=0 is not allowed: an integer >= 1, or null (one per CPU thread)"),
        ("processes=two", "processes='two' is not allowed: an integer >= 1, or null (one per CPU thread)"),
        ("max_batch=all", "max_batch='all' is not allowed: an integer >= 1, or null (as many as fit)"),
        ("preload=torch", "preload='torch' is not allowed: a list of module names, e.g. [torch]"),
    ],
)
def test_a_bad_launcher_setting_stops_the_sweep_with_one_line_before_anything_is_written(
    tiny_mnist, tmp_path, override, error
):
    args = optuna_sweep_args(
        tiny_mnist, tmp_path, "sweep", "hydra/launcher=batched", f"hydra.launcher.{override}"
    )
    result = run_cli("src.train", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: hydra.launcher.{error}"]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "optuna.db").exists()


# --- trials spread over processes (hydra.launcher.processes) ------------------------------------------


def test_a_batch_splits_into_parts_of_at_least_two_trials():
    assert split(list(range(20)), 2) == [list(range(10)), list(range(10, 20))]
    assert [len(p) for p in split(list(range(7)), 3)] == [3, 2, 2]
    assert split([1, 2, 3], 2) == [[1, 2, 3]]  # two parts would leave one with a single trial
    assert split([1, 2, 3, 4], 8) == [[1, 2], [3, 4]]


def test_a_stacked_groups_log_lines_name_its_jobs():
    assert jobs_named(["7"]) == "job 7"
    assert jobs_named(["10", "11", "12", "13", "14"]) == "jobs 10-14"
    assert jobs_named(["0", "2", "5"]) == "jobs 0, 2, 5"
    assert jobs_named(["3", "2"]) == "jobs 3, 2"


def test_a_spread_plans_the_parts_and_threads_that_train_a_stacked_chunk(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    ten = Spread.of(10, None, cpu, 2)  # the default: one process per thread
    assert (ten.parts, ten.threads_each, ten.largest_part, ten.why_one) == (2, 1, 5, None)
    assert (Spread.of(7, 3, cpu, 6).parts, Spread.of(7, 3, cpu, 6).largest_part) == (3, 3)
    assert (Spread.of(10, 1, cpu, 2).parts, Spread.of(10, 1, cpu, 2).threads_each) == (1, 2)
    assert Spread.of(3, None, cpu, 2) == Spread(3, 1, 2)  # too few to split, silently
    asked = Spread.of(3, 2, cpu, 2)
    assert (asked.parts, asked.threads_each) == (1, 2)
    assert (
        asked.why_one == "hydra.launcher.processes=2: 3 trials are too few to split (at least 2 per process)"
    )
    assert Spread.of(10, None, gpu, 2) == Spread(10, 1, 2)
    assert "cuda, which a fork cannot share" in Spread.of(10, 2, gpu, 2).why_one
    assert str(ten) == "in 2 processes of up to 5 (1 thread each)"


def test_auto_stacking_times_the_stack_as_it_would_train_and_compares_it_with_all_the_trials_alone(
    monkeypatch, caplog
):
    """Stacked, a part of the spread steps on its process's threads while the other parts step in theirs:
    the timed stack is the largest part on those threads, against every trial's step alone on all of them."""
    torch.manual_seed(0)
    model, sample = MLP(), torch.randn(64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,))
    train = SimpleNamespace(batch=lambda rows: (sample[rows], labels[rows]))
    stacked_model, how = stack_model(model, 2, sample)
    assert stacked_model is not None
    seen, alone_threads = [], []
    real_step = batched_runs.stacked_step

    def recording_step(stacked, optimizers, inputs, step_labels):
        seen.append((len(optimizers), torch.get_num_threads()))
        return real_step(stacked, optimizers, inputs, step_labels)

    real_cross_entropy = batched_runs.F.cross_entropy

    def recording_cross_entropy(*args, **kwargs):
        alone_threads.append(torch.get_num_threads())
        return real_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(batched_runs, "stacked_step", recording_step)
    monkeypatch.setattr(batched_runs.F, "cross_entropy", recording_cross_entropy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    rng = torch.get_rng_state()
    try:
        with caplog.at_level(logging.INFO, logger="src.batched_runs"):
            batched_runs.stacking_is_faster(model, how, Spread(10, 2, 1), sample, train)
        assert torch.get_num_threads() == 2  # as it was
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.get_rng_state(), rng)
    assert set(seen) == {(5, 1)}  # the largest part, on a part's one thread
    assert set(alone_threads) == {2}
    assert (
        "10 trials train" in caplog.text
        and "stacked in 2 processes of up to 5 (1 thread each)" in caplog.text
    )


class Unpicklable(Exception):
    def __init__(self, what: str, handle: object) -> None:
        super().__init__(what)
        self.handle = handle


def test_a_batchs_data_is_kept_for_the_next_batch_and_data_the_last_batch_did_not_use_is_dropped(monkeypatch):
    from omegaconf import OmegaConf

    import src.batched_runs as batched_runs

    loads = []

    class Splits:
        def as_inputs(self) -> "Splits":
            return self

    def load_data(cfg, device, mapped):
        assert mapped  # read once, converted at once
        loads.append(cfg.data.root)
        return Splits()

    monkeypatch.setattr(batched_runs, "load_data", load_data)
    loaded, cpu = batched_runs.LoadedData(), torch.device("cpu")
    data_a, data_b = (OmegaConf.create({"data": {"root": root}}) for root in ("a", "b"))
    first = loaded.get(data_a, cpu)
    assert loaded.get(data_a, cpu) is first  # two groups of one batch
    loaded.keep_used()
    assert loaded.get(data_a, cpu) is first  # the next batch
    loaded.get(data_b, cpu)
    loaded.keep_used()
    loaded.get(data_b, cpu)  # a batch without data a
    loaded.keep_used()
    assert loaded.get(data_a, cpu) is not first
    assert loads == ["a", "b", "a"]


def test_kept_data_is_read_again_when_its_files_change_in_the_middle_of_a_sweep(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    import src.batched_runs as batched_runs
    from src.mnist_files import RAW_FILES, raw_dir

    monkeypatch.setattr(batched_runs, "load_data", lambda *_, **__: SimpleNamespace(as_inputs=object))
    labels = raw_dir(tmp_path) / RAW_FILES["train_labels"]
    labels.parent.mkdir(parents=True)
    labels.write_bytes(b"first")
    loaded, cpu = batched_runs.LoadedData(), torch.device("cpu")
    cfg = OmegaConf.create({"data": {"root": str(tmp_path)}})
    first = loaded.get(cfg, cpu)
    loaded.keep_used()
    assert loaded.get(cfg, cpu) is first
    loaded.keep_used()
    labels.write_bytes(b"replaced")  # another size
    assert loaded.get(cfg, cpu) is not first


def test_parts_trained_in_child_processes_hand_back_their_outcomes_and_a_lost_child_fails_only_its_part():
    def work(part):
        if part == ["raises"]:
            raise ValueError("this part failed")
        if part == ["killed"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if part == ["unpicklable"]:
            return [Unpicklable("a lock inside", handle=lambda: None)]
        return [(item, os.getpid(), torch.get_num_threads()) for item in part]

    threads = torch.get_num_threads()
    results = in_processes([["a", "b"], ["c"], ["raises"], ["killed"], ["unpicklable"]], work, threads=1)

    assert [item for item, _, _ in results[0] + results[1]] == ["a", "b", "c"]
    pids = {pid for _, pid, _ in results[0]}, {pid for _, pid, _ in results[1]}
    assert pids[0] == {os.getpid()} and pids[1] != pids[0]
    assert all(count == 1 for _, _, count in results[0] + results[1])
    assert torch.get_num_threads() == threads  # restored here after the parts
    assert isinstance(results[2][0], ValueError) and str(results[2][0]) == "this part failed"
    assert isinstance(results[3][0], ChildProcessError) and "was killed by SIGKILL" in str(results[3][0])
    assert isinstance(results[4][0], RuntimeError) and str(results[4][0]) == "Unpicklable: a lock inside"


def loads_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_the_processes_of_a_batch_end_its_trials_as_interrupted_when_the_sweeps_process_is_killed(
    tiny_mnist, tmp_path
):
    sweep, args = sweep_in_the_middle_of_a_batch(tiny_mnist, tmp_path, 4, "hydra.launcher.processes=2")
    # the sweep's process only: its launch process trains trials 0 and 1, that one's child 2 and 3
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 60
    while live_processes_of_session(sweep.pid):
        assert time.monotonic() < deadline, "a batch went on training after the sweep's process died"
        time.sleep(0.2)
    for number in range(4):  # interrupted, their files written
        summary = read_json(tmp_path / "sweep" / str(number) / "metrics.json")
        assert summary["status"] == "interrupted" and 2 <= summary["epochs_completed"] < LONG_EPOCHS
        assert (tmp_path / "sweep" / str(number) / "model.pt").exists()

    resumed = run_cli("src.train", *args, f"hydra.sweep.dir={tmp_path / 'second'}", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(load_study(tmp_path).get_trials(states=(TrialState.COMPLETE,))) == 4


def test_a_fork_waits_until_the_heartbeat_being_written_is_recorded():
    """No child starts while the sweep's heartbeat thread is inside the database library."""

    class SlowStorage(optuna.storages.InMemoryStorage):
        def __init__(self) -> None:
            super().__init__()
            self.writing, self.written = threading.Event(), threading.Event()

        def set_trial_system_attr(self, trial_id, key, value) -> None:
            self.writing.set()
            time.sleep(0.5)
            super().set_trial_system_attr(trial_id, key, value)
            self.written.set()

    storage = SlowStorage()
    trial_id = optuna.create_study(storage=storage).ask()._trial_id
    with Heartbeats(storage, interval=0.05) as heartbeats:
        heartbeats.add(trial_id)  # the first beat, in this thread
        storage.writing.clear()
        storage.written.clear()
        assert storage.writing.wait(10)  # the heartbeat thread is writing now
        pid = os.fork()
        if pid == 0:
            os._exit(0 if storage.written.is_set() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_child_ends_its_trials_once_when_ctrl_c_reaches_it_twice(tmp_path):
    """From the terminal and forwarded by its parent: the second must not break off the files."""
    pid_file = tmp_path / "child.pid"

    def work(part):
        if part == ["child"]:
            pid_file.write_text(str(os.getpid()))
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                time.sleep(1.0)  # writing its trials' files
                return ["files written"]
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        child = int(pid_file.read_text())
        for _ in range(2):
            os.kill(child, signal.SIGINT)
            time.sleep(0.3)
        return ["parent done"]

    assert in_processes([["parent"], ["child"]], work, threads=1) == [["parent done"], ["files written"]]


def test_a_part_that_gets_no_process_trains_in_this_one(monkeypatch):
    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    results = in_processes(
        [["a"], ["b", "c"]], lambda part: [(item, os.getpid()) for item in part], threads=1
    )
    assert results == [[("a", os.getpid())], [("b", os.getpid()), ("c", os.getpid())]]


# --- the launch process (hydra_plugins/batched_launcher/launch_process.py) ------------------------------


def test_the_launch_process_preloads_its_modules_and_hands_back_each_works_outcome(tmp_path, monkeypatch):
    (tmp_path / "preloaded_module.py").write_text(
        "import logging\n"
        "logging.getLogger('preloaded_module').info('setting myself up')\n"
        "logging.getLogger('preloaded_module').warning('a real warning')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module_log = logging.getLogger("preloaded_module")
    module_log.setLevel(logging.INFO)
    log_file = logging.FileHandler(tmp_path / "preload.log")
    module_log.addHandler(log_file)

    def work(collected, settings):
        if collected[0].work == "whole batch fails":
            raise ValueError("no batch")
        outcomes = []
        for deferred in collected:
            if deferred.work == "raises":
                outcomes.append(KeyError("this one"))
            elif deferred.work == "unpicklable":
                outcomes.append(Unpicklable("a lock inside", handle=lambda: None))
            else:
                loaded = "preloaded_module" in sys.modules and module_log.isEnabledFor(logging.INFO)
                outcomes.append((deferred.work, os.getpid(), loaded, settings.max_batch))
        return outcomes

    process = LaunchProcess(work, ["preloaded_module", "no_such_module_here"])
    try:
        outcomes = process.run([Deferred("a"), Deferred("raises"), Deferred("unpicklable")], BatchSettings(3))
        assert outcomes[0] == ("a", process.pid, True, 3) and process.pid != os.getpid()
        assert isinstance(outcomes[1], KeyError) and outcomes[1].args == ("this one",)
        assert isinstance(outcomes[2], RuntimeError) and str(outcomes[2]) == "Unpicklable: a lock inside"
        with pytest.raises(ValueError, match="no batch"):
            process.run([Deferred("whole batch fails")], BatchSettings())
        assert process.run([Deferred("b")], BatchSettings())[0][:2] == ("b", process.pid)  # it goes on
        pid = process.pid
    finally:
        process.stop()
        module_log.removeHandler(log_file)
        log_file.close()
    assert "preloaded_module" not in sys.modules  # loaded there only
    # what it logged below WARNING while imported is left out of the sweep's log; its warnings are not
    assert (tmp_path / "preload.log").read_text() == "a real warning\n"
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)


@dataclass
class WaitsToPrepare:
    """A deferred work of a job's size (its configs, 43 KB pickled, as compressible as they are), whose
    prepare() waits for the test's go-ahead (a file)."""

    config_text: str
    go_ahead: str

    def prepare(self) -> None:
        deadline = time.monotonic() + 120
        while not os.path.exists(self.go_ahead) and time.monotonic() < deadline:
            time.sleep(0.01)


def test_the_sweeps_process_hands_a_dozen_works_over_while_the_launch_process_still_prepares_the_first(
    tmp_path,
):
    """The jobs run before the launch process was ready are handed over at once (a dozen, in a cold sweep):
    the sweep's process must not wait in its send until the launch process has prepared them (before, the
    pipe filled after four works, and the sweep's next job waited 0.1 to 0.3 s)."""
    go_ahead = tmp_path / "go ahead"
    config = "".join(f"  setting_{i}: value {i % 7} ${{hydra:job.num}} # a comment\n" for i in range(900))
    works = [Deferred(WaitsToPrepare(f"job: {n}\n{config}", str(go_ahead))) for n in range(12)]
    assert len(pickle.dumps(works[0])) > 40_000

    def work(collected, settings):
        return [deferred.work.config_text.split("\n")[0] for deferred in collected]

    process = LaunchProcess(work, [])
    try:
        while not process._ready:  # once it is ready, a handed-over work is sent at once
            process.hand_over([])
            time.sleep(0.01)
        handing = threading.Thread(target=lambda: [process.hand_over(works[: k + 1]) for k in range(12)])
        handing.start()
        handing.join(timeout=60)
        handed_while_preparing = not handing.is_alive()
        go_ahead.touch()
        handing.join()
        assert handed_while_preparing
        assert process.run(works, BatchSettings()) == [f"job: {n}" for n in range(12)]
    finally:
        go_ahead.touch()
        process.stop()


def test_a_launch_process_started_before_hydra_takes_what_it_would_have_inherited_once_adopted(
    tmp_path, monkeypatch
):
    """Started before Hydra (src/train.py), adopted at the launcher's setup: it runs its batches in the
    sweep's environment, directory, Hydra config and logging, as one forked at setup would."""
    (tmp_path / "sets_a_variable.py").write_text("import os\nos.environ['SET_BY_AN_IMPORT'] = 'kept'\n")
    (tmp_path / "adopted_preload.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CHANGED_AFTER_THE_FORK", "before")
    monkeypatch.setenv("REMOVED_AFTER_THE_FORK", "there")
    monkeypatch.delenv("SET_BY_AN_IMPORT", raising=False)

    def work(collected, settings):
        logging.getLogger("adopted").info("a line of the batch")
        return [
            {
                "pid": os.getpid(),
                "environ": {
                    name: os.environ.get(name)
                    for name in ("CHANGED_AFTER_THE_FORK", "REMOVED_AFTER_THE_FORK", "SET_AFTER_THE_FORK")
                },
                "set by its import": os.environ.get("SET_BY_AN_IMPORT"),
                "cwd": os.getcwd(),
                "job name": HydraConfig.get().job.name,
                "resolved": OmegaConf.create({"year": "${now:%Y}"}).year,
                "preloaded": "adopted_preload" in sys.modules,
            }
        ]

    process = LaunchProcess(work, ["sets_a_variable"], to_be_adopted=True)
    try:
        # what the sweep's process does between the fork and the launcher's setup
        monkeypatch.setenv("CHANGED_AFTER_THE_FORK", "after")
        monkeypatch.delenv("REMOVED_AFTER_THE_FORK")
        monkeypatch.setenv("SET_AFTER_THE_FORK", "new")
        workdir = tmp_path / "sweep cwd"
        workdir.mkdir()
        log_file = tmp_path / "sweep.log"
        hydra_logging = OmegaConf.create(
            {
                "version": 1,
                "formatters": {"simple": {"format": "[SWEEP] %(message)s"}},
                "handlers": {
                    "file": {"class": "logging.FileHandler", "formatter": "simple", "filename": str(log_file)}
                },
                "root": {"level": "INFO", "handlers": ["file"]},
                "disable_existing_loggers": False,
            }
        )
        hydra_config = OmegaConf.create({"hydra": {"job": {"name": "the_sweeps_job"}}})
        inheritance = Inheritance(
            environ=dict(os.environ),
            cwd=str(workdir),
            hydra_config=hydra_config,
            hydra_logging=hydra_logging,
            verbose=False,
            execution_whitelist=None,
            preload=["adopted_preload"],
        )
        assert process.adopt(inheritance)
        [outcome] = process.run([Deferred("a")], BatchSettings())
    finally:
        process.stop()
    assert outcome["pid"] not in (None, os.getpid())
    assert outcome["environ"] == {
        "CHANGED_AFTER_THE_FORK": "after",
        "REMOVED_AFTER_THE_FORK": None,
        "SET_AFTER_THE_FORK": "new",
    }
    assert outcome["set by its import"] == "kept"
    assert outcome["cwd"] == str(workdir)
    assert outcome["job name"] == "the_sweeps_job"
    assert outcome["resolved"] == time.strftime("%Y")  # Hydra's resolvers
    assert outcome["preloaded"]
    assert log_file.read_text() == "[SWEEP] a line of the batch\n"
    assert "SET_BY_AN_IMPORT" not in os.environ and "adopted_preload" not in sys.modules  # there only


def test_a_launch_process_started_before_hydra_leaves_quietly_unless_adopted_and_a_gone_one_is_not():
    def work(collected, settings):
        return ["ran"]

    never_adopted = LaunchProcess(work, [], to_be_adopted=True)
    pid = never_adopted.pid
    never_adopted._connection.close()  # the sweep's process went on without it (or ended)
    assert os.waitpid(pid, 0)[1] == 0
    never_adopted.pid = None

    gone = LaunchProcess(work, [], to_be_adopted=True)
    pid = gone.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_state(pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    inheritance = Inheritance(dict(os.environ), os.getcwd(), None, None, False, None, [])
    assert not gone.adopt(inheritance)  # the launcher forks another
    assert gone.pid is None
    with pytest.raises(ChildProcessError):  # reaped
        os.waitpid(pid, 0)


@pytest.mark.parametrize(
    ("argv", "started"),
    [
        (["--multirun", "hydra/launcher=batched", "hparams_search=steplr_optuna"], True),
        (["hydra/launcher=batched", "-m"], True),
        (["hydra/launcher=batched"], False),  # a single run
        (["-m", "hydra/launcher=joblib"], False),
        (["-m", "hparams_search=steplr_optuna"], False),  # a launcher from a config file: setup forks it
    ],
)
def test_the_launch_process_starts_before_hydra_only_for_a_multirun_that_chooses_this_launcher(
    monkeypatch, argv, started
):
    monkeypatch.setattr(batched_launcher, "DEFAULT_PRELOAD", ())
    monkeypatch.setattr(batched_launcher, "_started_before_hydra", None)
    batched_launcher.start_before_hydra(argv)
    process = batched_launcher._started_before_hydra
    assert (process is not None) == started
    if process is not None:
        first = process.pid
        batched_launcher.start_before_hydra(argv)  # once
        assert batched_launcher._started_before_hydra is process and process.pid == first
        process.stop()


class PreparedWork:
    """A deferred work with a prepare(): where and before what it was prepared, for the test below."""

    def __init__(self, name: str, marks: Path) -> None:
        self.name, self.marks, self.prepared_in = name, marks, None

    def prepare(self) -> None:
        if self.name == "cannot prepare":
            raise OSError("no trial")
        self.prepared_in = os.getpid()
        (self.marks / self.name).write_text("")


def test_the_launch_process_prepares_each_work_handed_over_while_the_batchs_later_jobs_still_run(tmp_path):
    def work(collected, settings):
        return [(d.work.name, d.work.prepared_in == os.getpid()) for d in collected]

    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(1.5)\n")
    sys.path.insert(0, str(tmp_path))
    process = LaunchProcess(work, ["slow_module"])
    sys.path.remove(str(tmp_path))
    collected: list[Deferred] = []

    def jobs_running_while_it_loads_and_after() -> None:
        for index in range(30):
            collected.append(Deferred(PreparedWork(f"job {index}", tmp_path)))
            process.hand_over(collected)
            time.sleep(0.1)

    try:
        # it becomes ready during the batch's jobs: the works collected by then are handed over at once, the
        # later ones as their jobs end, and each is prepared before the batch runs
        jobs = threading.Thread(target=jobs_running_while_it_loads_and_after)
        jobs.start()
        jobs.join(timeout=60)
        assert not jobs.is_alive(), "handing works over hung"
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"job {index}").exists() for index in range(30)):
            assert time.monotonic() < deadline, "the works were not all prepared before the batch ran"
            time.sleep(0.01)
        outcomes = process.run(collected, BatchSettings())
        assert outcomes == [(f"job {index}", True) for index in range(30)]
        # ready: each work is prepared there as it is handed over, before the batch runs
        collected = []
        for name in ("a", "cannot prepare", "b"):
            collected.append(Deferred(PreparedWork(name, tmp_path)))
            process.hand_over(collected)
            deadline = time.monotonic() + 30
            while name != "cannot prepare" and not (tmp_path / name).exists():
                assert time.monotonic() < deadline, f"{name} was not prepared before the batch ran"
                time.sleep(0.01)
        collected.append(Deferred(PreparedWork("last", tmp_path)))  # its job was the batch's last
        outcomes = process.run(collected, BatchSettings())
        assert outcomes == [("a", True), ("cannot prepare", False), ("b", True), ("last", True)]
        assert process.run([Deferred(PreparedWork("next batch", tmp_path))], BatchSettings()) == [
            ("next batch", True)
        ]
    finally:
        process.stop()


def test_a_killed_launch_process_fails_its_batch_with_how_it_ended_and_one_gone_between_batches_is_reaped(
    caplog,
):
    def work(collected, settings):
        os.kill(os.getpid(), signal.SIGKILL)

    process = LaunchProcess(work, [])
    with pytest.raises(
        ChildProcessError, match=r"the process running the batch's jobs \(pid \d+\) was killed by SIGKILL"
    ):
        process.run([Deferred("a")], BatchSettings())
    assert not process.alive

    idle = LaunchProcess(work, [])
    assert idle.alive
    pid = idle.pid
    os.kill(pid, signal.SIGKILL)  # between batches (out of memory, say): the launcher trains here instead
    deadline = time.monotonic() + 10
    while idle.alive:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (
        f"the launch process (pid {pid}) was killed by SIGKILL: batches train in this process" in caplog.text
    )
    with pytest.raises(ChildProcessError):  # reaped
        os.waitpid(pid, 0)


def test_ctrl_c_in_the_sweeps_process_ends_the_launch_processs_batch_after_its_files_are_written(tmp_path):
    started, written = tmp_path / "started", tmp_path / "written"

    def work(collected, settings):
        started.write_text("")
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            time.sleep(0.5)  # the trials write their files
            written.write_text("")
            raise
        return ["not interrupted"]

    def interrupt_when_started() -> None:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # to the sweep's process alone: it forwards it

    process = LaunchProcess(work, [])
    threading.Thread(target=interrupt_when_started, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            process.run([Deferred("a")], BatchSettings())
        assert written.exists()  # run() returned only after the batch's files were written
        deadline = time.monotonic() + 10
        while process_state(process.pid) != "Z":  # it leaves on its own, as after Ctrl-C
            assert time.monotonic() < deadline, "the launch process did not end after Ctrl-C"
            time.sleep(0.05)
    finally:
        process.stop()


def test_the_launch_process_ends_as_soon_as_the_sweeper_launches_no_more_batches(tiny_mnist, tmp_path):
    """The optuna_pruning sweeper ends the launch process once its last batch has returned (sweep_ended):
    the batch that leaves no trial to ask, before its outcomes are told, so the kernel tears the process
    down while the study is told and reported, instead of at the command's exit. The exit still reaps it:
    nothing of the command is left, not even a zombie."""
    command = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.train",
            *optuna_sweep_args(tiny_mnist, tmp_path),
            "hydra/launcher=batched",
            "hydra.launcher.processes=1",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2",
            "trainer.epochs=1",
            "hydra.verbose=[hydra_plugins.batched_launcher,hydra_plugins.optuna_pruning_sweeper.sweeper]",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )
    output, _ = command.communicate(timeout=600)
    assert command.returncode == 0, output[-3000:]
    lines = output.splitlines()
    trained = [i for i, line in enumerate(lines) if "2 trials train stacked (" in line]
    ended = [i for i, line in enumerate(lines) if "ended the launch process" in line]
    told = [i for i, line in enumerate(lines) if "told the study the outcomes of trials" in line]
    reported = [i for i, line in enumerate(lines) if "Sweep done" in line]
    assert len(trained) == 2 and len(ended) == 1 and len(told) == 2 and len(reported) == 1, output[-3000:]
    assert told[0] < trained[-1] < ended[0] < told[-1] < reported[0]  # as the last batch returned
    assert processes_of_session(command.pid) == {}  # the exit reaped it: no zombie left to PID 1


def test_an_ended_launch_process_goes_while_the_sweep_goes_on_and_stop_reaps_it(caplog):
    process = LaunchProcess(lambda collected, settings: ["done"], [])
    assert process.run([Deferred("a")], BatchSettings()) == ["done"]
    pid = process.pid
    process.end()  # returns at once: the kernel tears the process down meanwhile
    assert not process.alive
    deadline = time.monotonic() + 10
    while process_state(pid) != "Z":  # ended, not reaped yet
        assert time.monotonic() < deadline, process_state(pid)
        time.sleep(0.02)
    process.stop()
    assert process_state(pid) is None  # reaped
    assert "batches train in this process" not in caplog.text  # ended as asked: not taken for lost
