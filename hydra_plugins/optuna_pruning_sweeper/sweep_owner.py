"""The study a sweep directory belongs to.

Workers of one study may share a sweep directory (job_dirs.py keeps their jobs apart), but a sweep of
another study (another name, or the same name in another storage) would mix its runs with the first
study's and replace its RESULTS_FILE. The first sweep that uses a directory records its study in
STUDY_FILE; a sweep of another study is refused before it opens its own (an older sweep directory that
has only a RESULTS_FILE is recognised by it).
"""

import os
from pathlib import Path

import yaml

RESULTS_FILE = "optimization_results.yaml"  # the study's outcome, written when a sweep ends
STUDY_FILE = ".optuna_study.yaml"  # the study that uses the directory, written before its first trial
OWNER_KEYS = ("study_name", "storage")  # in both files; storage as the sweep logs it (password masked)


class SweepDirectoryTaken(Exception):
    pass


def recorded_owner(sweep_dir: Path) -> dict[str, str] | None:
    """The study the directory's STUDY_FILE (or, from an older sweep, RESULTS_FILE) names, if any."""
    for name in (STUDY_FILE, RESULTS_FILE):
        try:
            recorded = yaml.safe_load((sweep_dir / name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(recorded, dict) and all(isinstance(recorded.get(key), str) for key in OWNER_KEYS):
            return {key: recorded[key] for key in OWNER_KEYS}
    return None


def check_sweep_dir(sweep_dir: Path, study_name: str, storage: str) -> None:
    """Raise SweepDirectoryTaken if the directory belongs to another study; write nothing."""
    check_owner(sweep_dir, recorded_owner(sweep_dir), {"study_name": study_name, "storage": storage})


def claim_sweep_dir(sweep_dir: Path, study_name: str, storage: str) -> None:
    """Record the study as the directory's, or raise SweepDirectoryTaken naming the study it belongs to.
    Two sweeps that claim one directory at the same instant: STUDY_FILE is linked into place whole, which
    exactly one of them succeeds in; the other then reads it."""
    owner = {"study_name": study_name, "storage": storage}
    check_owner(sweep_dir, recorded_owner(sweep_dir), owner)
    if (sweep_dir / STUDY_FILE).exists():
        return
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        written = sweep_dir / f"{STUDY_FILE}.{os.getpid()}.tmp"
        written.write_text(yaml.safe_dump(owner))
        try:
            os.link(written, sweep_dir / STUDY_FILE)
        except FileExistsError:
            check_owner(sweep_dir, recorded_owner(sweep_dir), owner)
        finally:
            written.unlink()
    except OSError:
        return  # an unwritable directory: the sweep's first batch says so, in one line


def check_owner(sweep_dir: Path, recorded: dict[str, str] | None, owner: dict[str, str]) -> None:
    if recorded is not None and recorded != owner:
        raise SweepDirectoryTaken(
            f"hydra.sweep.dir={sweep_dir} holds the runs of study {recorded['study_name']!r} in "
            f"{recorded['storage']}, not of study {owner['study_name']!r} in {owner['storage']}: give this "
            "sweep a directory of its own, or run that study's command to resume it"
        )
