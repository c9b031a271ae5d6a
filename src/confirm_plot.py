"""confirmation.png: each confirmed setting's metric per seed, its mean and 95% interval, and the value the
sweep reported for it (usually above the interval: the winner's curse made visible)."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from src.atomic_files import write_atomically  # noqa: E402
from src.seed_groups import Setting  # noqa: E402
from src.verdict import by_seed  # noqa: E402


def plot_confirmation(
    path: Path, verdict: dict[str, Any], confirmed: list[Setting], names: list[str]
) -> None:
    metric = verdict["metric"]
    records = verdict["settings"]  # best first
    index = {name: i for i, name in enumerate(names)}
    figure, axes = plt.subplots(figsize=(max(6.0, 2.2 * len(records) + 2), 4.8))
    for x, record in enumerate(records):
        values = list(by_seed(confirmed[index[record["name"]]], metric).values())
        spread = [x + 0.12 * ((i % 5) - 2) / 2 for i in range(len(values))]
        axes.scatter(spread, values, s=18, color="tab:blue", alpha=0.6, label="a seed" if x == 0 else None)
        if record["ci95"]:
            low, high = record["ci95"]
            axes.errorbar(
                x + 0.3,
                record["mean"],
                yerr=[[record["mean"] - low], [high - record["mean"]]],
                fmt="o",
                color="black",
                capsize=5,
                label="mean, 95% CI" if x == 0 else None,
            )
        axes.scatter(
            [x + 0.3],
            [record["sweep_value"]],
            marker="x",
            s=60,
            color="tab:red",
            label="the sweep's value" if x == 0 else None,
        )
    axes.set_xticks(range(len(records)), [record["name"] for record in records], rotation=10)
    axes.set_xlim(-0.6, len(records) - 0.2)
    axes.set_ylabel(f"{metric} (%)")
    seeds = max(record["n"] for record in records)
    axes.set_title(f"The sweep's top settings rerun over {seeds} new seeds")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=110))
    plt.close(figure)
