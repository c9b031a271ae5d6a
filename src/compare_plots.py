"""PNG figures for `python -m src.compare --plot DIR`."""

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from hydra_plugins.optuna_pruning_sweeper.sweep_owner import RESULTS_FILE  # noqa: E402
from src.run_record import STATUS_COMPLETED, Column, Summary  # noqa: E402
from src.runs import Run, read_step_lrs  # noqa: E402
from src.seed_groups import NOT_PART_OF_A_SETTING  # noqa: E402
from src.study_runs import open_study_storage  # noqa: E402

TOP_CURVES = 10
MAP_AXES = ("scheduler.step_size", "scheduler.gamma")


def label(run: Run) -> str:
    """The run's sweep time and job number, its scheduler and the values a StepLR sweep varies."""
    parts = ["/".join(run.directory.parts[-2:]), str(run.params.get("scheduler", ""))]
    for key in ("scheduler.step_size", "scheduler.gamma", "optimizer.lr"):
        if key in run.params:
            value = run.params[key]
            parts.append(
                f"{key.rsplit('.', 1)[-1]}={value:.3g}"
                if isinstance(value, float)
                else f"{key.rsplit('.', 1)[-1]}={value}"
            )
    return " ".join(parts)


def save(figure: plt.Figure, path: Path) -> str:
    if figure.get_layout_engine() is None and not any(ax.get_label() == "<colorbar>" for ax in figure.axes):
        figure.tight_layout()  # not with a colorbar: tight_layout would draw the plots over it
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return f"wrote {path}"


def plot_validation_curves(runs: Sequence[Run], path: Path) -> str:
    figure, axes = plt.subplots(figsize=(8, 5))
    for run in runs[:TOP_CURVES]:
        if run.epochs:
            axes.plot(
                [e[Column.EPOCH] for e in run.epochs],
                [e[Column.VAL_ACC] for e in run.epochs],
                marker="o",
                label=label(run),
            )
    axes.set(
        xlabel="epoch", ylabel="validation accuracy (%)", title=f"Validation accuracy, top {TOP_CURVES} runs"
    )
    axes.legend(fontsize=7)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(figure, path)


def plot_lr_schedules(runs: Sequence[Run], path: Path) -> str:
    """Each run's learning rate: a per-epoch schedule as a step from each epoch's start to the next one's
    (the last epoch too), a per-step one at every optimizer step (its lr_steps.csv)."""
    figure, axes = plt.subplots(figsize=(8, 5))
    for run in runs:
        if step_lrs := read_step_lrs(run.directory):
            per_epoch = len(step_lrs) / max(1, len(run.epochs))
            axes.plot([1 + step / per_epoch for step in range(len(step_lrs))], step_lrs, label=label(run))
        elif run.epochs:
            axes.step(*lr_steps(run.epochs), where="post", label=label(run))
    axes.set(
        xlabel="epoch (each drawn from its start to the next epoch's)",
        ylabel="learning rate",
        yscale="log",
        title="Learning-rate schedule of each run",
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    readable_log_axis(axes.yaxis)
    if len(runs) <= 15:
        axes.legend(fontsize=7)
    return save(figure, path)


def lr_steps(epochs: Sequence[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Step corners of a schedule: each epoch's lr from its start to the next epoch's, so the last epoch
    (whose decay a 2-epoch grid shows) is as wide as the others."""
    starts = [e[Column.EPOCH] for e in epochs]
    rates = [e[Column.LR] for e in epochs]
    return [*starts, starts[-1] + 1], [*rates, rates[-1]]


def readable_log_axis(axis: matplotlib.axis.Axis, values: Sequence[float] = ()) -> None:
    """Plain labels on a log axis: at the values themselves when there are a few, else at 1, 2 and 5 times
    the powers of ten; no minor labels (matplotlib's overlap: `2x10^-1 3x10^-1 4x10^-1...`)."""
    distinct = sorted(set(values))
    if 0 < len(distinct) <= 8:
        axis.set_major_locator(FixedLocator(distinct))
    else:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def other_params(run: Run) -> dict:
    """A run's parameters other than step_size and gamma, its seed and the operational keys."""
    left_out = {*NOT_PART_OF_A_SETTING, *MAP_AXES}
    return {k: v for k, v in run.params.items() if k not in left_out}


def plot_step_size_gamma(runs: Sequence[Run], path: Path) -> str | None:
    """The completed runs that differ from the first one only in step_size and gamma (and seed), on a map."""
    points = [r for r in runs if set(MAP_AXES) <= r.params.keys() and r.status == STATUS_COMPLETED]
    points = [r for r in points if r.metrics.get(Summary.VAL_ACC) is not None]
    if points:
        top = other_params(points[0])
        points = [r for r in points if other_params(r) == top]
    if len({(r.params["scheduler.step_size"], r.params["scheduler.gamma"]) for r in points}) < 2:
        return None
    figure, axes = plt.subplots(figsize=(7, 5))
    scatter = axes.scatter(
        [r.params["scheduler.step_size"] for r in points],
        [r.params["scheduler.gamma"] for r in points],
        c=[r.metrics[Summary.VAL_ACC] for r in points],
        cmap="viridis",
        s=80,
        edgecolors="black",
    )
    figure.colorbar(scatter, ax=axes, label="validation accuracy (%)")
    axes.set(
        xlabel="step_size",
        ylabel="gamma",
        yscale="log",
        title="Validation accuracy over (step_size, gamma), everything else as in the top run",
    )
    step_sizes = sorted({r.params["scheduler.step_size"] for r in points})
    axes.set_xlim(step_sizes[0] - 0.5, step_sizes[-1] + 0.5)
    axes.xaxis.set_major_locator(
        FixedLocator(step_sizes) if len(step_sizes) <= 12 else MaxNLocator(integer=True)
    )
    readable_log_axis(axes.yaxis, [r.params["scheduler.gamma"] for r in points])
    return save(figure, path)


def find_studies(runs: Sequence[Run], roots: Iterable[Path]) -> dict[tuple[str, str], Path]:
    """(storage, study name) of the sweeps the runs belong to, from their optimization_results.yaml."""
    candidates = {run.directory.parent / RESULTS_FILE for run in runs}
    candidates |= {p for root in roots if root.is_dir() for p in root.glob(RESULTS_FILE)}
    studies = {}
    for path in sorted(candidates):
        if path.exists():
            results = yaml.safe_load(path.read_text()) or {}
            if results.get("storage") and results.get("study_name"):
                studies[(results["storage"], results["study_name"])] = path.parent
    return studies


def shown_trials(study: Any, runs: Sequence[Run]) -> Any:
    """The study restricted to the trials whose run directory is among the runs shown (one sweep directory
    given: that sweep's trials, not the whole study's), as an in-memory study."""
    import optuna

    shown = {run.directory.resolve() for run in runs}
    trials = [
        t
        for t in study.trials
        if t.user_attrs.get("run_dir") and (Path.cwd() / t.user_attrs["run_dir"]).resolve() in shown
    ]
    view = optuna.create_study(directions=study.directions)
    view.add_trials(trials)
    return view


def plot_optuna_study(storage: str, study_name: str, runs: Sequence[Run], directory: Path) -> list[str]:
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # plot_contour's
    study = optuna.load_study(study_name=study_name, storage=open_study_storage(storage))
    target = (study.metric_names or ["objective"])[0]
    view = shown_trials(study, runs)
    if not view.trials:
        return [
            f"skipped the optuna plots of study {study_name!r}: none of its trials is among the runs shown"
        ]
    scope = f"study {study_name!r}, {len(view.trials)} of its {len(study.trials)} trials"
    plots = {
        "optimization_history": (optuna_plots.plot_optimization_history, f"{target} of each trial ({scope})"),
        "param_importances": (
            optuna_plots.plot_param_importances,
            f"Importance of each parameter for {target} ({scope})",
        ),
        "contour": (optuna_plots.plot_contour, f"{target} over each pair of parameters ({scope})"),
    }
    lines = []
    for name, (plot, title) in plots.items():
        path = directory / f"optuna_{study_name}_{name}.png"
        try:
            axes = plot(view, target_name=target)
            subplots = list(axes.flat) if hasattr(axes, "flat") else [axes]
            figure = subplots[0].get_figure()
            if not any(ax.collections or ax.lines or ax.patches or ax.images for ax in subplots):
                plt.close(figure)
                lines.append(f"skipped {path.name}: the trials shown give it nothing to draw")
                continue
            if hasattr(axes, "shape"):  # a contour matrix, one row and column per parameter
                figure.set_size_inches(3.4 * axes.shape[1] + 1.5, 2.8 * axes.shape[0] + 0.5)
                figure.suptitle(title)
            else:
                for side in ("left", "right"):  # Optuna puts some of its titles there
                    axes.set_title("", loc=side)
                axes.set_title(title, fontsize=10)
            for subplot in subplots:
                integer_axes(subplot, view)
            lines.append(save(figure, path))
        except (ValueError, RuntimeError, ImportError) as error:
            lines.append(f"warning: optuna {name} plot of study {study_name!r} skipped: {error}")
            plt.close("all")
    return lines


def integer_axes(axes: matplotlib.axes.Axes, study: Any) -> None:
    """Whole-number ticks on the axes of integer parameters (and of trial numbers)."""
    from optuna.distributions import IntDistribution

    integers = {
        name for t in study.trials for name, d in t.distributions.items() if isinstance(d, IntDistribution)
    }
    for axis, text in ((axes.xaxis, axes.get_xlabel()), (axes.yaxis, axes.get_ylabel())):
        if text in integers or text == "Trial":
            axis.set_major_locator(MaxNLocator(integer=True))


def write_plots(directory: Path, runs: Sequence[Run], roots: Iterable[Path]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        plot_validation_curves(runs, directory / "val_acc_per_epoch.png"),
        plot_lr_schedules(runs, directory / "lr_schedules.png"),
    ]
    # Accuracies are comparable within one set only (same data, model and epochs): the first set shown.
    first_set = [run for run in runs if run.comparability() == runs[0].comparability()]
    lines.append(
        plot_step_size_gamma(first_set, directory / "val_acc_step_size_gamma.png")
        or "skipped val_acc_step_size_gamma.png: no two completed runs differ only in step_size and gamma"
    )
    for (storage, study_name), _ in find_studies(runs, roots).items():
        try:
            lines += plot_optuna_study(storage, study_name, runs, directory)
        except Exception as error:  # a study that moved, a storage that needs a password...
            lines.append(
                f"warning: study {study_name!r} in {storage} not read: {type(error).__name__}: {error}"
            )
    return lines
