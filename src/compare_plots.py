"""PNG figures for `python -m src.compare --plot DIR`."""

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from src.run_record import STATUS_COMPLETED  # noqa: E402
from src.runs import Run  # noqa: E402
from src.seed_groups import NOT_PART_OF_A_SETTING  # noqa: E402

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
                [e["epoch"] for e in run.epochs],
                [e["val_acc"] for e in run.epochs],
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
    figure, axes = plt.subplots(figsize=(8, 5))
    for run in runs:
        if run.epochs:
            axes.step(
                [e["epoch"] for e in run.epochs],
                [e["lr"] for e in run.epochs],
                where="post",
                label=label(run),
            )
    axes.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="Learning-rate schedule of each run")
    if len(runs) <= 15:
        axes.legend(fontsize=7)
    return save(figure, path)


def other_params(run: Run) -> dict:
    """A run's parameters other than step_size and gamma, its seed and the operational keys."""
    left_out = {*NOT_PART_OF_A_SETTING, *MAP_AXES}
    return {k: v for k, v in run.params.items() if k not in left_out}


def plot_step_size_gamma(runs: Sequence[Run], path: Path) -> str | None:
    """The completed runs that differ from the first one only in step_size and gamma (and seed), on a map."""
    points = [r for r in runs if set(MAP_AXES) <= r.params.keys() and r.status == STATUS_COMPLETED]
    points = [r for r in points if r.metrics.get("val_acc") is not None]
    if points:
        top = other_params(points[0])
        points = [r for r in points if other_params(r) == top]
    if len({(r.params["scheduler.step_size"], r.params["scheduler.gamma"]) for r in points}) < 2:
        return None
    figure, axes = plt.subplots(figsize=(7, 5))
    scatter = axes.scatter(
        [r.params["scheduler.step_size"] for r in points],
        [r.params["scheduler.gamma"] for r in points],
        c=[r.metrics["val_acc"] for r in points],
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
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(figure, path)


def find_studies(runs: Sequence[Run], roots: Iterable[Path]) -> dict[tuple[str, str], Path]:
    """(storage, study name) of the sweeps the runs belong to, from their optimization_results.yaml."""
    candidates = {run.directory.parent / "optimization_results.yaml" for run in runs}
    candidates |= {p for root in roots if root.is_dir() for p in root.glob("optimization_results.yaml")}
    studies = {}
    for path in sorted(candidates):
        if path.exists():
            results = yaml.safe_load(path.read_text()) or {}
            if results.get("storage") and results.get("study_name"):
                studies[(results["storage"], results["study_name"])] = path.parent
    return studies


def plot_optuna_study(storage: str, study_name: str, directory: Path) -> list[str]:
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # plot_contour's
    study = optuna.load_study(study_name=study_name, storage=storage)
    lines = []
    plots = {
        "optimization_history": optuna_plots.plot_optimization_history,
        "param_importances": optuna_plots.plot_param_importances,
        "contour": optuna_plots.plot_contour,
    }
    for name, plot in plots.items():
        path = directory / f"optuna_{study_name}_{name}.png"
        try:
            axes = plot(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            if hasattr(axes, "shape"):  # a contour matrix, one row and column per parameter
                figure.set_size_inches(3.4 * axes.shape[1] + 1.5, 2.8 * axes.shape[0] + 0.5)
            lines.append(save(figure, path))
        except (ValueError, RuntimeError, ImportError) as error:
            lines.append(f"warning: optuna {name} plot of study {study_name!r} skipped: {error}")
            plt.close("all")
    return lines


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
            lines += plot_optuna_study(storage, study_name, directory)
        except KeyError as error:
            lines.append(f"warning: study {study_name!r} not found in {storage}: {error}")
    return lines
