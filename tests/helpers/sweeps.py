"""Optuna sweeps through the CLI on the tiny MNIST, and what they leave behind."""

from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from helpers.cli import read_json, run_cli, tiny_data_overrides

STUDY = "steplr"


def optuna_sweep_args(tiny_mnist: Path, tmp_path: Path, sweep_dir: str = "sweep", *extra: str) -> list[str]:
    return [
        "--multirun",
        "hparams_search=steplr_optuna",
        f"hydra.sweep.dir={tmp_path / sweep_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        *tiny_data_overrides(tiny_mnist),
        *extra,
    ]


def load_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())


def composed(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())


EPOCHS = 4


PRUNING_SWEEP = [
    "logger=none",
    f"trainer.epochs={EPOCHS}",
    "optimizer.lr=0.003",
    "scheduler.step_size=1",
    "scheduler.gamma=choice(0.9,0.8,0.7,0.001,0.0005,0.0001)",
    "hydra/sweeper/sampler=grid",
]


MEDIAN_PRUNER = [
    "hydra/sweeper/pruner=median",
    "hydra.sweeper.pruner.n_startup_trials=2",
    "hydra.sweeper.pruner.n_warmup_steps=1",
]


def run_pruning_sweep(tiny_mnist: Path, tmp_path: Path, sweep_dir: str, *extra: str, pruner=MEDIAN_PRUNER):
    args = optuna_sweep_args(tiny_mnist, tmp_path, sweep_dir, *PRUNING_SWEEP, *pruner, *extra)
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def check_pruned_trials(tmp_path: Path, sweep_dir: str) -> list:
    study = load_study(tmp_path)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "the pruner never fired"
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.RUNNING))
    for trial in pruned:
        run_dir = Path(trial.user_attrs["run_dir"])
        rows = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
        metrics = read_json(run_dir / "metrics.json")
        assert metrics["status"] == "pruned"
        assert len(rows) == metrics["epochs_completed"] < EPOCHS
        assert f"after epoch {metrics['epochs_completed']}" in metrics["reason"]
        assert trial.last_step == metrics["epochs_completed"]  # reported once per epoch
    collapsed = [t for t in study.trials if t.params["scheduler.gamma"] <= 0.001]
    assert any(t.state == TrialState.PRUNED for t in collapsed)
    results = yaml.safe_load((tmp_path / sweep_dir / "optimization_results.yaml").read_text())
    assert results["trials"]["pruned"] == len(pruned) and results["trials"]["fail"] == 0
    saved = sum(
        EPOCHS - read_json(Path(t.user_attrs["run_dir"]) / "metrics.json")["epochs_completed"] for t in pruned
    )
    assert results["epochs_saved_by_pruning"] == saved > 0
    return pruned
