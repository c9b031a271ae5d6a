"""`python -m src.compare` over run directories made by real tiny runs and a tiny sweep."""

import csv
import io
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from helpers.cli import read_json, run_cli, run_python, tiny_data_overrides
from PIL import Image

GAMMAS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def runs_root(tiny_mnist, tmp_path_factory) -> Path:
    """A project-like directory: outputs/ with two single runs, multirun/ with a 3-trial Optuna sweep
    and a plain grid over gamma."""
    root = tmp_path_factory.mktemp("project")
    data = tiny_data_overrides(tiny_mnist)
    for name, extra in (
        ("single_a", ["scheduler.gamma=0.3"]),
        ("single_b", ["model=mlp", "trainer.epochs=1"]),
    ):
        result = run_cli(
            "src.train", f"hydra.run.dir={root}/outputs/{name}", *data, "trainer.epochs=2", *extra
        )
        assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(
        "src.train",
        "--multirun",
        "hparams_search=steplr_optuna",
        f"hydra.sweep.dir={root}/multirun/optuna",
        f"hydra.sweeper.storage=sqlite:///{root}/multirun/optuna.db",
        "hydra.sweeper.n_trials=3",
        "trainer.epochs=2",
        *data,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={root}/multirun/grid",
        *data,
        "trainer.epochs=2",
        f"scheduler.gamma={','.join(map(str, GAMMAS))}",
        "scheduler.step_size=1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def compare(root: Path, *args: str):
    return run_cli("src.compare", *args, cwd=root)


def all_run_dirs(root: Path) -> list[Path]:
    return [p.parent for p in root.glob("*/**/metrics.json")]


def json_records(root: Path, *args: str) -> list[dict]:
    result = compare(root, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_table_lists_every_run_with_its_values(runs_root):
    result = compare(runs_root)
    assert result.returncode == 0, result.stderr
    run_dirs = all_run_dirs(runs_root)
    assert len(run_dirs) == 8
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 + 8
    header = lines[0].split()
    for column in (
        "run",
        "status",
        "scheduler.gamma",
        "best_val_acc",
        "val_acc",
        "test_acc",
        "epochs_completed",
    ):
        assert column in header
    for run_dir in run_dirs:
        metrics = read_json(run_dir / "metrics.json")
        line = next(line for line in lines if str(run_dir.relative_to(runs_root)) + " " in line)
        assert f"{metrics['val_acc']:.4g}" in line.split() and f"{metrics['test_acc']:.4g}" in line.split()
    # The MLP run (1 epoch, another model) is not comparable with the rest: flagged as its own set.
    assert "not comparable" in result.stderr and "model=MLP" in result.stderr


def test_json_export_matches_the_files_and_is_sorted_by_validation_accuracy(runs_root):
    records = json_records(runs_root)
    by_set: dict[str, list[float]] = {}
    for record in records:
        metrics = read_json(runs_root / record["run"] / "metrics.json")
        assert record["val_acc"] == metrics["val_acc"] and record["test_acc"] == metrics["test_acc"]
        assert record["status"] == metrics["status"]
        by_set.setdefault(record["set"], []).append(record["val_acc"])
    for values in by_set.values():
        assert values == sorted(values, reverse=True)


def test_sort_top_filter_and_status(runs_root):
    by_test = json_records(runs_root, "multirun/grid", "--sort", "test_acc")
    assert [r["test_acc"] for r in by_test] == sorted((r["test_acc"] for r in by_test), reverse=True)
    ascending = json_records(runs_root, "multirun/grid", "--sort", "scheduler.gamma", "--ascending")
    assert [r["params"]["scheduler.gamma"] for r in ascending] == list(GAMMAS)
    assert len(json_records(runs_root, "--top", "2")) == 2
    small_gamma = json_records(runs_root, "--filter", "scheduler.gamma<0.5")
    assert small_gamma and all(r["params"]["scheduler.gamma"] < 0.5 for r in small_gamma)
    everything = json_records(runs_root)
    assert len(small_gamma) == sum(r["params"]["scheduler.gamma"] < 0.5 for r in everything)
    assert len(json_records(runs_root, "--filter", "model=MLP")) == 1
    assert len(json_records(runs_root, "--status", "completed")) == 8
    assert json_records(runs_root, "--status", "pruned") == []


def test_csv_and_markdown_exports_parse_back_to_the_same_numbers(runs_root, tmp_path):
    out = tmp_path / "runs.csv"
    result = compare(runs_root, "--csv", str(out), "--markdown")
    assert result.returncode == 0, result.stderr
    records = {r["run"]: r for r in json_records(runs_root)}
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 8
    for row in rows:
        assert float(row["val_acc"]) == records[row["run"]]["val_acc"]
        assert float(row["scheduler.gamma"]) == records[row["run"]]["params"]["scheduler.gamma"]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert set(table[1].replace("|", "").replace("-", "")) == set() and len(table) == 2 + 8
    for line in table[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        assert float(cells["val_acc"]) == pytest.approx(records[cells["run"]]["val_acc"], abs=0.01)


def test_plots_are_real_images(runs_root, tmp_path):
    result = compare(runs_root, "--plot", str(tmp_path / "figures"))
    assert result.returncode == 0, result.stderr
    expected = [
        "val_acc_per_epoch.png",
        "lr_schedules.png",
        "val_acc_step_size_gamma.png",
        "optuna_steplr_optimization_history.png",
        "optuna_steplr_param_importances.png",
    ]
    import optuna

    study = optuna.load_study(study_name="steplr", storage=f"sqlite:///{runs_root}/multirun/optuna.db")
    if len({t.params["scheduler.step_size"] for t in study.trials}) > 1:
        expected.append("optuna_steplr_contour.png")
    else:  # a contour of one step_size would be an empty canvas
        assert "skipped optuna_steplr_contour.png: the trials shown give it nothing to draw" in result.stderr
    for name in expected:
        path = tmp_path / "figures" / name
        assert path.exists(), result.stderr
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300
            assert sum(1 for count in image.convert("L").histogram() if count) > 10  # not a blank canvas


def broken_copy(runs_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(runs_root / "multirun" / "grid", root / "multirun" / "grid")
    runs = sorted(p for p in (root / "multirun" / "grid").iterdir() if p.is_dir())
    (runs[0] / "metrics.json").unlink()  # crashed before the end
    csv_file = runs[1] / "metrics.csv"
    csv_file.write_text(csv_file.read_text()[:-25])  # truncated mid-row
    (runs[2] / "metrics.json").write_text('{"status": "compl')  # malformed JSON
    (root / "multirun" / "empty_sweep").mkdir()
    return root


def test_broken_directories_each_give_one_warning_and_the_rest_is_printed(runs_root, tmp_path):
    root = broken_copy(runs_root, tmp_path)
    result = compare(root)
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    grid = root / "multirun" / "grid"
    assert any("grid/0" in w and "no metrics.json" in w for w in warnings)
    assert any("grid/1" in w and "truncated metrics.csv" in w for w in warnings)
    assert any("grid/2" in w and "malformed metrics.json" in w for w in warnings)
    assert any("empty_sweep" in w and "empty directory" in w for w in warnings)
    assert len(warnings) == 4
    rows = result.stdout.strip().splitlines()[1:]
    assert len(rows) == 1 and "multirun/grid/1" in rows[0]  # the truncated CSV run keeps its metrics.json row
    assert grid.exists()


def test_nothing_found_is_a_clear_error(tmp_path):
    result = compare(tmp_path)
    assert result.returncode != 0
    assert "error: no runs found" in result.stderr


def test_bad_filter_is_a_clear_error(runs_root):
    result = compare(runs_root, "--filter", "gamma is small")
    assert result.returncode == 2 and "KEY OP VALUE" in result.stderr


def test_a_sort_or_best_per_key_no_run_has_is_a_clear_error_naming_keys_there_are(runs_root):
    for option in ("--sort", "--best-per"):
        result = compare(runs_root, option, "scheduler.gama")
        assert result.returncode == 2 and not result.stdout, result.stdout
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {option} scheduler.gama: no run has it; give a metric (val_acc")
        assert "scheduler.gamma" in line  # a key that differs between the runs, as an example
    valid = compare(runs_root, "--sort", "scheduler.gamma", "--best-per", "scheduler.step_size")
    assert valid.returncode == 0, valid.stderr


def test_runs_that_failed_before_any_epoch_are_listed_by_a_metric_none_of_them_has(runs_root, tmp_path):
    early = tmp_path / "early"
    shutil.copytree(all_run_dirs(runs_root)[0], early)
    summary = read_json(early / "metrics.json")
    summary.update(status="failed", val_acc=None, best_val_acc=None, test_acc=None, epochs_completed=0)
    (early / "metrics.json").write_text(json.dumps(summary))
    for sort in ((), ("--sort", "val_acc")):
        result = compare(tmp_path, str(early), *sort)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1].split()[:2] == ["early", "failed"]


def test_a_plot_directory_that_cannot_be_made_is_one_line_before_anything_is_printed(runs_root, tmp_path):
    a_file = tmp_path / "figures"
    a_file.write_text("not a directory\n")
    cases = (
        (a_file, "a file, not a directory"),
        (a_file / "sub", "cannot make the directory"),
        (tmp_path / "figure.png", "names a file, but --plot takes a directory"),
    )
    for target, reason in cases:
        result = compare(runs_root, "--plot", str(target))
        assert result.returncode == 2 and not result.stdout, result.stdout
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: --plot {target}: {reason}"), line
    assert a_file.read_text() == "not a directory\n"
    assert not (tmp_path / "figure.png").exists()


def test_a_path_that_is_a_file_is_named_as_such(runs_root, tmp_path):
    a_file = tmp_path / "runs.txt"
    a_file.write_text("")
    result = compare(runs_root, str(a_file))
    assert f"warning: {a_file}: not a directory" in result.stderr


def test_tensorboard_reader_reads_the_logged_scalars_back(runs_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs_root / "outputs" / "single_a"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    rows = list(csv.DictReader(io.StringIO((run_dir / "metrics.csv").read_text())))
    val = events.Scalars("accuracy/val")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([float(r["val_acc"]) for r in rows])
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([float(r["lr"]) for r in rows])
    assert {"loss/train", "loss/val", "accuracy/test"} <= set(events.Tags()["scalars"])
    # HParams: the run as a session (hyperparameters, a readable name, status), no experiment of its own.
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["scheduler.gamma"].number_value == pytest.approx(0.3)
    assert start.hparams["scheduler"].string_value == "StepLR"
    assert start.group_name == "run: epochs=2 gamma=0.3"  # the overrides as given, data and logger left out
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("hparam/")]


def test_logger_none_writes_no_event_files(tiny_mnist, tmp_path):
    result = run_cli(
        "src.train",
        f"hydra.run.dir={tmp_path}/run",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=1",
        "logger=none",
    )
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "run").glob("events.out.tfevents*"))


def test_compare_never_imports_torch(runs_root, tmp_path):
    code = (
        "import sys; from src.compare import main; "
        f"main(['--plot', '{tmp_path}']); print('torch' in sys.modules)"
    )
    result = run_python(code, runs_root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_over_seeds_ranks_settings_by_their_mean_over_the_seeds(tiny_mnist, tmp_path):
    """A grid over 3 seeds x 2 step sizes: two settings, each metric's mean and sample standard deviation
    over its seeds, the best mean first; a seed run twice counts once, a pruned run is left out."""
    result = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={tmp_path}/seeds",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=2",
        "logger=none",
        "trainer.seed=0,1,2",
        "scheduler.step_size=1,2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted((tmp_path / "seeds").glob("[0-9]*"), key=lambda p: int(p.name))
    shutil.copytree(runs[0], tmp_path / "seeds" / "again")  # the same seed and setting, run again
    pruned = tmp_path / "seeds" / "pruned"
    shutil.copytree(runs[1], pruned)
    metrics = read_json(pruned / "metrics.json")
    (pruned / "metrics.json").write_text(json.dumps({**metrics, "status": "pruned", "val_acc": 99.9}))
    result = compare(tmp_path, "seeds", "--over-seeds", "--json")
    assert result.returncode == 0, result.stderr
    assert "1 runs that did not complete are left out" in result.stderr
    settings = json.loads(result.stdout)
    assert sorted(s["params"]["scheduler.step_size"] for s in settings) == [1, 2]
    for setting in settings:
        assert setting["seeds"] == [0, 1, 2] and len(setting["runs"]) == 3
        files = [read_json(tmp_path / run / "metrics.json") for run in setting["runs"]]
        assert {f["hyperparameters"]["scheduler.step_size"] for f in files} == {
            setting["params"]["scheduler.step_size"]
        }
        for metric in ("val_acc", "test_acc"):
            values = [f[metric] for f in files]
            assert setting[metric] == pytest.approx(statistics.fmean(values))
            assert setting[f"{metric}_sd"] == pytest.approx(statistics.stdev(values))
    assert settings[0]["val_acc"] >= settings[1]["val_acc"]
    table = compare(tmp_path, "seeds", "--over-seeds").stdout.strip().splitlines()
    assert table[0].split() == [
        "scheduler.step_size",
        "seeds",
        *(
            f"{metric}{spread}"
            for metric in ("val_acc", "test_acc", "best_val_acc")
            for spread in ("", "_sd", "_ci95")
        ),
    ]
    assert len(table) == 5 and table[1].split()[1] == "3"
    assert table[3] == "" and "step_size=" in table[4] and "3 paired seeds" in table[4]
    assert settings[0]["compared_with_best"] is None
    assert settings[1]["compared_with_best"]["common_seeds"] == [0, 1, 2]
    compare(tmp_path, "seeds", "--over-seeds", "--csv", str(tmp_path / "settings.csv"))
    with open(tmp_path / "settings.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["val_acc"]) for row in rows] == pytest.approx([s["val_acc"] for s in settings])
    refused = compare(tmp_path, "seeds", "--over-seeds", "--status", "pruned")
    assert refused.returncode == 2 and "--over-seeds takes completed runs only" in refused.stderr


def test_step_size_gamma_map_shows_completed_runs_that_differ_only_in_those_two(tmp_path):
    from src.compare_plots import plot_step_size_gamma
    from src.runs import Run

    def run(step_size: int, gamma: float, lr: float, status: str = "completed") -> Run:
        params = {"scheduler.step_size": step_size, "scheduler.gamma": gamma, "optimizer.lr": lr}
        return Run(tmp_path / f"{step_size}_{gamma}_{lr}", {"status": status, "val_acc": 90.0}, params)

    assert plot_step_size_gamma([run(1, 0.1, 0.001), run(2, 0.5, 0.01)], tmp_path / "lr.png") is None
    pruned = [run(1, 0.1, 0.001), run(2, 0.5, 0.001, "pruned")]
    assert plot_step_size_gamma(pruned, tmp_path / "pruned.png") is None
    assert plot_step_size_gamma([run(1, 0.1, 0.001), run(2, 0.5, 0.001)], tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 0


def test_a_study_lists_the_run_directories_of_its_trials(runs_root):
    storage = f"sqlite:///{runs_root}/multirun/optuna.db"
    records = json.loads(compare(runs_root, "--study", "steplr", "--storage", storage, "--json").stdout)
    sweep_runs = sorted(p for p in (runs_root / "multirun" / "optuna").iterdir() if p.name.isdigit())
    assert len(sweep_runs) == 3
    assert sorted(runs_root / record["run"] for record in records) == sweep_runs
    unknown = compare(runs_root, "--study", "nope", "--storage", storage)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [f"error: no study 'nope' in {storage}; it holds: steplr"]


def test_a_storage_that_is_not_there_is_one_line_and_reading_creates_no_database(runs_root, tmp_path):
    """Optuna would create an empty SQLite database at a mistyped path; a server that does not answer gets
    its first line, not psycopg's and SQLAlchemy's four."""
    missing = tmp_path / "typo" / "optuna.db"
    (tmp_path / "typo").mkdir()
    storages = {
        f"sqlite:///{missing}": f"no such database file ({missing})",
        "postgresql://nobody@127.0.0.1:1/nothing": "cannot be read (OperationalError: connection failed",
    }
    for storage, message in storages.items():
        result = compare(runs_root, "--study", "steplr", "--storage", storage)
        assert result.returncode == 2 and not result.stdout
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: --storage {storage}: {message}"), line
    assert not missing.exists()
    default = compare(tmp_path, "--study", "steplr")  # no multirun/optuna.db here: none is made
    assert default.returncode == 2 and "no such database file (multirun/optuna.db)" in default.stderr
    assert not (tmp_path / "multirun").exists()
    # --storage says where --study is: alone it was ignored, and every run under outputs/ and multirun/ listed
    for module in ("src.compare", "src.confirm"):
        alone = run_cli(
            module,
            *([] if module == "src.compare" else ["multirun"]),
            "--storage",
            f"sqlite:///{missing}",
            cwd=runs_root,
        )
        assert alone.returncode == 2 and not alone.stdout
        assert (
            alone.stderr.strip()
            .splitlines()[-1]
            .endswith(
                f"error: --storage sqlite:///{missing}: give --study NAME too (the study whose runs to read)"
            )
        )


def test_a_quoted_glob_reads_every_matching_sweep_directory(runs_root):
    records = json.loads(compare(runs_root, "multirun/*", "--json").stdout)
    assert len(records) == 3 + len(GAMMAS)
    assert {record["run"].split("/")[1] for record in records} == {"optuna", "grid"}


def test_a_run_under_two_of_the_directories_given_is_listed_once(runs_root):
    """`compare multirun multirun/grid` listed the grid's runs twice, and --over-seeds counted them twice."""
    once = json.loads(compare(runs_root, "multirun", "--json").stdout)
    (runs_root / "grid_link").symlink_to(runs_root / "multirun" / "grid")
    try:
        records = json.loads(compare(runs_root, "multirun", "multirun/grid", "grid_link", "--json").stdout)
    finally:
        (runs_root / "grid_link").unlink()
    assert sorted(record["run"] for record in records) == sorted(record["run"] for record in once)


def test_each_epoch_of_a_schedule_is_drawn_as_wide_as_the_others():
    from src.compare_plots import lr_steps

    assert lr_steps([{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.05}]) == ([1, 2, 3], [0.1, 0.05, 0.05])


def test_a_log_axis_is_labelled_with_plain_numbers_and_no_minor_labels():
    import matplotlib.pyplot as plt

    from src.compare_plots import readable_log_axis

    figure, axes = plt.subplots()
    gammas = [0.0934, 0.0858, 0.2, 0.35]
    axes.scatter([1, 2, 3, 4], gammas)
    axes.set_yscale("log")
    readable_log_axis(axes.yaxis, gammas)
    figure.canvas.draw()
    major = [t.get_text() for t in axes.get_yticklabels()]
    minor = [t.get_text() for t in axes.yaxis.get_minorticklabels()]
    plt.close(figure)
    assert major == ["0.0858", "0.0934", "0.2", "0.35"] and not any(minor)


def test_the_optuna_figures_of_one_sweep_directory_show_only_its_trials(runs_root):
    import optuna

    from src.compare_plots import shown_trials
    from src.runs import load_runs

    study = optuna.load_study(study_name="steplr", storage=f"sqlite:///{runs_root}/multirun/optuna.db")
    runs, _ = load_runs([runs_root / "multirun" / "optuna"])
    assert len(shown_trials(study, runs).trials) == len(study.trials) == 3
    assert len(shown_trials(study, runs[:2]).trials) == 2


def test_a_parameter_column_tells_its_values_apart_and_markdown_splits_back_into_cells():
    from src.compare import render_markdown, render_text

    header = ["run", "scheduler.gamma", "optimizer.lr", "val_acc"]
    rows = [
        ["a", 0.09341234, 0.001, 92.3456],
        ["b", 0.08581234, 0.00100004, 92.3412],
        ["c|d", 0.5, 0.002, None],
    ]
    text = render_text(header, rows).splitlines()
    assert "0.09341" in text[1] and "0.08581" in text[2]  # not both 0.09
    assert "0.00100004" in text[2] and "0.001 " in text[1]  # 4 significant digits would make them equal
    assert "92.35" in text[1] and "92.34" in text[2]  # results keep 2 decimals
    table = render_markdown(header, rows).splitlines()
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in table]
    assert all(len(row) == len(header) for row in cells)
    assert cells[4][0] == "c\\|d" and cells[4][3] == "-"


def test_csv_is_written_whole_or_not_at_all_with_one_line_for_a_path_that_cannot_be_written(
    runs_root, tmp_path
):
    target = tmp_path / "runs.csv"
    target.write_text("an earlier export\n")
    missing_dir = compare(runs_root, "--csv", str(tmp_path / "no" / "such" / "dir" / "runs.csv"))
    assert missing_dir.returncode == 2 and not missing_dir.stdout  # nothing printed before the error
    assert missing_dir.stderr.strip().splitlines()[-1].startswith(f"error: --csv {tmp_path / 'no'}")
    assert "Traceback" not in missing_dir.stderr
    is_a_directory = compare(runs_root, "--csv", str(tmp_path))
    assert is_a_directory.returncode == 2 and "cannot write it" in is_a_directory.stderr
    assert compare(runs_root, "--csv", str(target)).returncode == 0
    assert target.read_text().startswith("run,") and not list(tmp_path.glob(".runs.csv.*"))


def test_hostile_run_files_each_give_a_warning_and_compare_goes_on(runs_root, tmp_path):
    root = tmp_path / "hostile"
    shutil.copytree(runs_root / "multirun" / "grid", root)
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    (runs[0] / "metrics.csv").write_bytes(bytes(range(256)) * 4)  # binary
    (runs[0] / ".hydra" / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")  # not UTF-8
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    (runs[1] / "metrics.json").write_text(json.dumps({**metrics, "val_acc": [1, 2], "data_source": ["x"]}))
    (runs[2] / "metrics.json").unlink()
    (runs[2] / "metrics.json").mkdir()  # a directory where the file belongs
    looped = root / "looped"
    shutil.copytree(runs[1], looped)
    (looped / "metrics.json").unlink()
    (looped / "metrics.json").symlink_to(looped / "metrics.json")  # unreadable: a symlink to itself
    huge = root / "huge"
    shutil.copytree(runs[1], huge)
    with open(huge / "metrics.json", "wb") as f:
        f.truncate(300_000_000)  # sparse: 300 MB that a run never writes
    result = compare(root, str(root), "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    expected = [
        (runs[0], "unreadable metrics.csv (not UTF-8 text)"),
        (runs[0], "unreadable .hydra/config.yaml (not UTF-8 text)"),
        (runs[1], "val_acc=[1, 2], not a number: left out"),
        (runs[2], "unreadable metrics.json (not a file)"),
        (looped, "unreadable metrics.json (Too many levels of symbolic links)"),
        (huge, "unreadable metrics.json (300 MB, larger than any run writes)"),
    ]
    for directory, message in expected:
        assert any(str(directory) in w and message in w for w in warnings), (message, warnings)
    listed = {record["run"] for record in json.loads(result.stdout)}
    assert {runs[0].name, runs[1].name} <= listed and runs[2].name not in listed and "huge" not in listed


def test_a_per_step_schedules_step_counts_show_as_the_numbers_the_run_used(tiny_mnist, tmp_path):
    """Hydra saves `total_steps: ${steps.total}` as written; each run fills steps.* in from its data
    (16 steps an epoch on the tiny MNIST) and records them, and compare shows those numbers."""
    result = run_cli(
        "src.train",
        "--multirun",
        f"hydra.sweep.dir={tmp_path}/grid",
        *tiny_data_overrides(tiny_mnist),
        "trainer.epochs=2",
        "scheduler=onecycle,warmup_cosine",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for run_dir in all_run_dirs(tmp_path):
        steps = read_json(run_dir / "metrics.json")["steps"]
        counts = (steps["per_epoch"], steps["total"], steps["warmup"], steps["after_warmup"])
        assert counts == (16, 32, 16, 16)
    records = {r["params"]["scheduler"]: r["params"] for r in json_records(tmp_path, "grid")}
    assert records["OneCycleLR"]["scheduler.total_steps"] == 32
    assert records["SequentialLR"]["scheduler.milestones"] == "[16]"
    assert "'total_iters': 16" in records["SequentialLR"]["scheduler.schedulers"]
    assert "'T_max': 16" in records["SequentialLR"]["scheduler.schedulers"]
    assert not [v for p in records.values() for v in p.values() if isinstance(v, str) and "${" in v]
    filtered = json_records(tmp_path, "grid", "--filter", "scheduler.total_steps=32")
    assert [r["params"]["scheduler"] for r in filtered] == ["OneCycleLR"]


def test_an_interpolation_is_resolved_from_the_recorded_hyperparameters_or_else_left_as_written(tmp_path):
    from src.runs import load_run

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "steps:\n  total: null\n"
        "scheduler:\n  total_steps: ${steps.total}\n"
        "  other: ${nowhere.at_all}\n  custom: ${no_such_resolver:}\n"
    )
    # a run from before metrics.json recorded its steps: its recorded hyperparameters stand in
    (run_dir / "metrics.json").write_text(
        json.dumps({"status": "completed", "hyperparameters": {"scheduler.total_steps": 860}})
    )
    run, warnings = load_run(run_dir)
    assert warnings == []
    assert run.params["scheduler.total_steps"] == 860
    assert run.params["scheduler.other"] == "${nowhere.at_all}"
    assert run.params["scheduler.custom"] == "${no_such_resolver:}"
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "steps": {"total": 120},
                "hyperparameters": {"scheduler.total_steps": 860},
            }
        )
    )
    run, _ = load_run(run_dir)
    assert run.params["scheduler.total_steps"] == 120


def test_a_run_whose_metric_is_nan_is_warned_about_and_ranks_after_every_number_either_way(
    runs_root, tmp_path
):
    root = tmp_path / "nan"
    shutil.copytree(runs_root / "multirun" / "grid", root)
    nan_run = sorted(p for p in root.iterdir() if p.is_dir())[1]  # in the middle: a NaN there stops a sort
    metrics = json.loads((nan_run / "metrics.json").read_text())
    (nan_run / "metrics.json").write_text(json.dumps({**metrics, "val_acc": float("nan")}))
    for order in ((), ("--ascending",)):
        records = json_records(root, str(root), *order)
        assert records[-1]["run"] == nan_run.name
        numbers = [r["val_acc"] for r in records[:-1]]
        assert numbers == sorted(numbers, reverse=not order)
    result = compare(root, str(root))
    assert f"warning: {nan_run}: metrics.json has val_acc=nan, not a number: left out" in result.stderr


def test_a_filter_that_could_only_match_by_accident_is_a_clear_error(runs_root):
    """An ordering against text would compare text ('0.1' < 'abc'), and a key no run has would silently
    show nothing: both are refused in one line before anything is printed; numbers order only numbers."""
    refused = {
        "scheduler.gamma<abc": "error: --filter 'scheduler.gamma<abc': < needs a number, not abc",
        "val_acc>=nan": "error: --filter 'val_acc>=nan': >= needs a number, not nan",
        "val_acc=nan": "error: --filter 'val_acc=nan': nan equals nothing",
        "scheduler.gama<0.5": "error: --filter scheduler.gama: no run has it",
    }
    for text, start in refused.items():
        result = compare(runs_root, "--filter", text)
        assert result.returncode == 2 and not result.stdout, (text, result.stdout)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(start), line
    assert json_records(runs_root, "--filter", "scheduler>0") == []  # a class name is in no numeric range
    nothing = compare(runs_root, "--filter", "scheduler.gamma>1", "--json")
    assert nothing.returncode == 0 and json.loads(nothing.stdout) == []
    assert "warning: none of the" in nothing.stderr and "passes --status and --filter" in nothing.stderr


def test_a_sweeps_job_directories_are_read_in_the_order_of_their_numbers(tmp_path):
    from src.runs import find_run_directories

    sweep, empty = tmp_path / "sweep", tmp_path / "empty"
    for name in ["10", "2", "0", "1", "trial_10", "trial_9"]:
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("{}")  # as Hydra writes it when the sweep starts
    (sweep / "11").mkdir()  # a job of a running sweep, not started yet: passed over
    (empty / "12").mkdir(parents=True)  # not in a sweep directory
    found, warnings = find_run_directories([sweep, empty])
    assert [p.name for p in found] == ["0", "1", "2", "10", "trial_9", "trial_10"]
    assert warnings == [f"{empty / '12'}: empty directory, no run in it"]
