"""Runs that share their first epochs at lr0 train them once, with results equal to training from scratch."""

from pathlib import Path

import pytest
import torch
from helpers.cli import compose_run, read_json, run_cli, tiny_data_overrides
from helpers.sweeps import load_study, optuna_sweep_args
from helpers.training import read_rows, rows_without_timing, train_tiny
from omegaconf import OmegaConf

from src.schedules import constant_epochs, fill_in_steps


def run_tiny(tiny_mnist: Path, run_dir: Path, *overrides: str) -> dict:
    """Train in-process on the tiny MNIST without TensorBoard; the run's metrics.json. One thread: the
    thread count is part of what a shared state depends on, and other jobs on the machine would change it."""
    train_tiny(tiny_mnist, run_dir, "logger=none", "trainer.num_threads=1", *overrides)
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


def test_a_per_step_schedule_that_reuses_epochs_ends_exactly_where_training_from_scratch_ends(
    tiny_mnist, tmp_path
):
    """StepLR stepped after every optimizer step (16 per epoch here): a step_size of 32 keeps lr0 for two
    epochs, and those are reused from a run that kept it for three."""
    cache = f"trainer.prefix_cache={tmp_path / 'cache'}"
    common = ["trainer.epochs=4", "optimizer.lr=0.003", "scheduler.interval=step", "scheduler.gamma=0.9"]
    run_tiny(tiny_mnist, tmp_path / "first", *common, "scheduler.step_size=48", cache)
    decays_after_two = [*common, "scheduler.step_size=32"]
    reusing = run_tiny(tiny_mnist, tmp_path / "reusing", *decays_after_two, cache)
    scratch = run_tiny(tiny_mnist, tmp_path / "scratch", *decays_after_two)
    assert reusing["epochs_reused"] == 2 and scratch["epochs_reused"] == 0
    assert rows_without_timing(tmp_path / "reusing") == rows_without_timing(tmp_path / "scratch")
    assert (tmp_path / "reusing" / "lr_steps.csv").read_text() == (
        tmp_path / "scratch" / "lr_steps.csv"
    ).read_text()
    weights = [torch.load(tmp_path / name / "model.pt") for name in ("reusing", "scratch")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    steps = (tmp_path / "reusing" / "lr_steps.csv").read_text().splitlines()[1:]
    assert [float(line.split(",")[1]) for line in steps] == [0.003] * 32 + [pytest.approx(0.0027)] * 32


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
        (["scheduler=onecycle"], 0),  # starts at max_lr / div_factor, and cycles Adam's beta1
        (["scheduler=warmup_cosine"], 0),
        (["scheduler=warmup_cosine", "scheduler.schedulers.0.start_factor=1.0", "steps.warmup_epochs=2"], 2),
        (["scheduler=cyclic"], 0),
        (["scheduler=cosine_restarts"], 0),
        (["scheduler=plateau"], 0),  # its steps follow the run's own results
        (["scheduler.interval=step", "scheduler.step_size=40"], 4),  # per step: 40 of 10 per epoch
        (["scheduler.interval=step", "scheduler.step_size=41"], 4),
        (["scheduler.interval=step", "scheduler.step_size=39"], 3),  # epoch 4's last step has decayed
    ],
)
def test_constant_epochs_are_found_by_stepping_the_schedule(tmp_path, scheduler, expected):
    cfg = compose_run(["trainer.epochs=6", *scheduler], tmp_path)
    fill_in_steps(cfg, n_train=640)  # 10 steps per epoch of 64
    assert constant_epochs(cfg) == expected, OmegaConf.to_yaml(cfg.scheduler)


def test_an_error_an_interruption_made_while_a_state_was_saved_ends_the_run_as_interrupted(
    tiny_mnist, tmp_path, monkeypatch
):
    """Seen once in CI (a joblib sweep whose terminal hung up): torch.save's zip writer, cut short by the
    interruption, raised RuntimeError("unexpected pos 2560 vs 2454"), and the run was recorded as failed."""
    from src.shared_prefix import SharedPrefix

    def save_cut_short(self, *args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 2560 vs 2454"
            ) from None

    monkeypatch.setattr(SharedPrefix, "save", save_cut_short)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(
            tiny_mnist, tmp_path / "run", "trainer.epochs=3", f"trainer.prefix_cache={tmp_path / 'cache'}"
        )
    summary = read_json(tmp_path / "run" / "metrics.json")
    assert (
        summary["status"] == "interrupted" and summary["reason"] == "KeyboardInterrupt: stopped from outside"
    )


def test_the_interruption_behind_an_error_is_found_through_its_causes_and_contexts():
    from src.interrupts import interruption_behind

    stop = KeyboardInterrupt()
    try:
        try:
            raise stop
        except KeyboardInterrupt:
            try:
                raise OSError("cut short")
            except OSError as inner:
                raise RuntimeError("clean-up failed") from inner
    except RuntimeError as error:
        assert interruption_behind(error) is stop
    assert interruption_behind(RuntimeError("on its own")) is None


def test_a_single_run_with_a_sweep_preset_makes_no_sweep_directory_for_its_prefix_cache(tiny_mnist, tmp_path):
    """The preset's `${hydra:sweep.dir}/.prefix_cache` made an empty multirun/DATE/TIME/ for a single run."""
    result = run_cli(
        "src.train",
        *tiny_data_overrides(tiny_mnist),
        "hparams_search=steplr_optuna",
        "trainer.epochs=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "multirun").exists()
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert read_json(run_dir / "metrics.json")["status"] == "completed"
    assert "a single run has no sweep to share it with" in (run_dir / "train.log").read_text()


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


def test_the_state_key_hashes_every_option_but_those_known_not_to_change_training(tiny_mnist, tmp_path):
    """A training option added later (gradient clipping, say) separates runs without touching the key code;
    the schedule, the run's length and where it logs do not."""
    from src.run import load_data
    from src.shared_prefix import state_key

    def key(*overrides: str) -> str:
        cfg = compose_run([*tiny_data_overrides(tiny_mnist), "trainer.num_threads=1", *overrides], tmp_path)
        torch.set_num_threads(1)
        return state_key(cfg, load_data(cfg, torch.device("cpu")), torch.device("cpu"))

    base = key()
    for same in (
        "scheduler.gamma=0.5",
        "scheduler=onecycle",
        "trainer.epochs=9",
        "logger=none",
        "prune_from=first_epoch",
    ):
        assert key(same) == base, same
    for other in (
        "+trainer.grad_clip=1.0",
        "+model.width=7",
        "optimizer.lr=0.002",
        "trainer.seed=3",
        "data.val_size=300",
    ):
        assert key(other) != base, other
