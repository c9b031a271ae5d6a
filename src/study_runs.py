"""The run directories of an Optuna study's trials: `python -m src.compare --study NAME --storage URL`.

Every worker of a distributed sweep writes into a sweep directory of its own, on its own machine; the
study knows them all. Each trial records its run directory (`run_dir`) relative to the directory its
sweep was started in when it lies inside it, so the paths resolve from the project directory wherever
the study is read (another checkout, another mount of a shared filesystem).
"""

import argparse
from pathlib import Path

DEFAULT_STORAGE = "sqlite:///multirun/optuna.db"


def add_study_arguments(parser: argparse.ArgumentParser, study_help: str) -> None:
    """--study NAME and --storage URL|JOURNAL_FILE, as compare and confirm take them."""
    parser.add_argument("--study", metavar="NAME", help=study_help)
    parser.add_argument(
        "--storage",
        help=f"the study's storage: a URL or an Optuna journal file (default {DEFAULT_STORAGE})",
    )


def check_study_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--storage says where --study is: given alone, it was ignored and the runs read from elsewhere."""
    if args.storage is not None and not args.study:
        parser.error(f"--storage {args.storage}: give --study NAME too (the study whose runs to read)")
    args.storage = args.storage or DEFAULT_STORAGE


class StudyError(Exception):
    """A study that cannot be read; the message says which and what exists."""


def open_study_storage(storage: str):
    """An Optuna storage from a URL, or from the path of a journal file (which no URL can name; also as the
    sweeper describes it: `journal file PATH`). Reading never creates one: Optuna would create an empty
    SQLite database at a mistyped path."""
    if "://" in storage:
        if storage.startswith("sqlite:"):
            from sqlalchemy.engine import make_url

            database = make_url(storage).database
            if database and database != ":memory:" and not Path(database).is_file():
                raise StudyError(f"--storage {storage}: no such database file ({database})")
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from hydra_plugins.optuna_pruning_sweeper.storage import JOURNAL_PREFIX

    storage = storage.removeprefix(JOURNAL_PREFIX)

    if not Path(storage).is_file():
        raise StudyError(f"--storage {storage}: neither a storage URL nor an Optuna journal file")
    return JournalStorage(JournalFileBackend(storage))


def study_run_dirs(study_name: str, storage: str, project_dir: Path) -> tuple[list[Path], list[str]]:
    """The run directories of the study's trials that exist here, and a warning for each one that does not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        opened = open_study_storage(storage)
        names = [summary.study_name for summary in optuna.get_all_study_summaries(opened)]
    except StudyError:
        raise
    except Exception as error:
        from hydra_plugins.optuna_pruning_sweeper.storage import one_line

        cause = type(getattr(error, "orig", None) or error).__name__
        raise StudyError(f"--storage {storage}: cannot be read ({cause}: {one_line(error)})") from None
    if study_name not in names:
        raise StudyError(f"no study {study_name!r} in {storage}; it holds: {', '.join(names) or 'no study'}")
    directories, warnings = [], []
    for trial in optuna.load_study(study_name=study_name, storage=opened).trials:
        recorded = trial.user_attrs.get("run_dir")
        if recorded is None:
            warnings.append(f"trial {trial.number} ({trial.state.name.lower()}): no run directory recorded")
            continue
        directory = project_dir / recorded
        if directory.is_dir():
            directories.append(directory)
        else:
            worker = trial.user_attrs.get("worker", "an unknown worker")
            warnings.append(f"trial {trial.number}: {recorded} is not here (it ran on {worker})")
    return directories, warnings
