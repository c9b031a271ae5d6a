"""Rerun a sweep's best settings over fresh seeds and say which differences hold.

    python -m src.confirm multirun/2026-11-25/10-00-00 --top 3 --seeds 5
    python -m src.confirm --study steplr --storage sqlite:///multirun/optuna.db --top 3 --seeds 5
    python -m src.confirm multirun/2026-11-25/10-00-00 --seeds 10 hydra/launcher=joblib   add seeds, 2 at once
    python -m src.confirm multirun/2026-11-25/12-00-00 --best-per scheduler --top 5   each family at its best

A sweep's best value is the maximum of many noisy trials: it is biased upward (the winner's curse). This
takes the top settings of a sweep (an Optuna sweep's directory or study, or a plain grid's directory),
ranked by the metric the sweep optimized, and trains each with seeds the sweep did not use: the first
--seeds integers that no run of the sweep had. The reruns are one normal Hydra multirun over settings and
seeds (`python -m src.train --multirun +confirm=setting-<id>,... trainer.seed=...`, any launcher: extra
`key=value` arguments go to it), in OUT/setting-<id>/seed_<seed>/, so compare, TensorBoard and the
dashboard read them. A rerun skips the seeds already completed (an interrupted one is trained again), so it
resumes and adds seeds.

The verdict, printed and written to OUT/confirmation.yaml (and .md with --markdown), with a plot
(OUT/confirmation.png): per setting the mean ± sd and 95% t interval of the metric, beside the sweep's
value; the best setting against each other one on their common seeds (paired t-test); how many seeds
would likely tell a difference apart; and the winner's test accuracy, which is reported, never used to
choose. OUT defaults to the sweep directory's sibling `<sweep>-confirmation` (for a study:
multirun/<study>-confirmation).
"""

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from src.atomic_files import write_text_atomically
from src.compare import (
    UsageError,
    best_per,
    check_key,
    comparability_groups,
    describe_comparability,
    describe_groups,
    expand,
    parameter_formatter,
    relative,
    render_markdown,
    render_text,
    sort_key,
)
from src.errors import UserInputError
from src.interrupts import report_interrupts_in_one_line, terminated
from src.run_record import STATUS_COMPLETED, Summary
from src.runs import OPERATIONAL_KEYS, RERUN_GROUP, Run, load_runs
from src.seed_groups import SEED_KEY, Setting, group_by_setting
from src.study_runs import StudyError, add_study_arguments, check_study_arguments, study_run_dirs
from src.verdict import judge, setting_names

CONFIRMATION_FILE = "confirmation.yaml"
LOCK_FILE = ".confirm.lock"  # held while a confirmation trains into its directory
DEFAULT_METRIC = Summary.VAL_ACC
# Keys the confirmation sets itself in every run: the seed, and one shared-epochs cache for all settings.
SET_BY_CONFIRMATION = (SEED_KEY, "trainer.prefix_cache", "overwrite")


# Hydra's keys of the reruns' own sweep (a plain multirun over settings and seeds, into
# OUT/setting-<id>/seed_<n>/).
HOW_IT_SWEEPS = ("hydra/sweeper", "hydra.sweeper", "hydra.sweep", "hydra.mode")
# Each setting's config as an option of a config group of its own (OUT/.settings/confirm/setting-<id>.yaml),
# added to the reruns' config search path: `+confirm=setting-<id>,...` sweeps over the settings.
RERUN_CONFIGS = ".settings"


class ConfirmError(Exception):
    """A confirmation that cannot be done as asked; the message says why and what to do."""


def trained_by_sweep(setting: Setting) -> tuple:
    """What the sweep's runs of a setting trained (data, model, epochs: Run.comparability()), which each of
    its reruns must have trained too: another data.root, or data that is not there (the offline fallback's
    digits), would be confirmed under the setting's name."""
    return setting.runs[0].comparability()


def check_same_data(setting: Setting, reruns: Setting) -> None:
    expected = trained_by_sweep(setting)
    for run in reruns.runs:
        if (trained := run.comparability()) != expected:
            raise ConfirmError(
                f"{relative(run.directory)} did not train what the sweep did (the sweep's: "
                f"{describe_comparability(expected)}; the rerun's: {describe_comparability(trained)}): "
                "check data.root"
            )


def check_rerun_overrides(overrides: Sequence[str]) -> None:
    """The extra arguments may say where and how the reruns run (the launcher, the device, where the data
    is), never what they train: a changed value would be confirmed under the setting's name, and several
    values would train runs that share one seed's directory."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    how = [key for key in OPERATIONAL_KEYS if key not in SET_BY_CONFIRMATION]
    parser = OverridesParser.create()
    for text in overrides:
        key = text.lstrip("+~").partition("=")[0]
        if key in SET_BY_CONFIRMATION or any(
            key == k or key.startswith((f"{k}.", f"{k}/")) for k in HOW_IT_SWEEPS
        ):
            raise ConfirmError(
                f"{text} is not allowed: confirm sets {key} itself (a plain multirun of the seeds into --out)"
            )
        if not (key.startswith(("hydra.", "hydra/")) or key == "logger" or key in how):
            raise ConfirmError(
                f"{text} is not allowed: the reruns train each setting as the sweep ran it; extra arguments "
                f"may set hydra.*, hydra/<group>, logger, {', '.join(how)}"
            )
        try:
            several = parser.parse_overrides([text])[0].is_sweep_override()
        except Exception:  # src.train says what is wrong with it
            several = False
        if several:
            raise ConfirmError(f"{text} is not allowed: one value (each seed's reruns share one directory)")
    # The reruns' command names its own config directory, where src.train leaves names to Hydra: checked
    # here as a plain multirun (`hydra/launcher=nope` was Hydra's fourteen lines, then "failed")
    from src.command_line import check_command_line

    try:
        check_command_line(["--multirun", *overrides])
    except UserInputError as error:
        raise ConfirmError(str(error)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.confirm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="*",
        help="the sweep's directories (or quoted globs); arguments with '=' are Hydra overrides for the "
        "reruns (hydra/launcher=joblib, trainer.device=cpu, ...)",
    )
    add_study_arguments(parser, "take the sweep from this Optuna study's trials")
    parser.add_argument(
        "--top", type=int, default=3, help="how many of the best settings to rerun (default 3)"
    )
    parser.add_argument(
        "--seeds", type=int, default=5, help="seeds per setting, new to the sweep (default 5)"
    )
    parser.add_argument(
        "--best-per",
        metavar="KEY",
        help="take the best setting for each value of KEY (scheduler: each schedule family at its best)",
    )
    parser.add_argument("--out", type=Path, help="where the reruns and the verdict go")
    parser.add_argument(
        "--markdown", action="store_true", help="print markdown, also written to confirmation.md"
    )
    args = parser.parse_intermixed_args(argv)
    args.overrides = [text for text in args.sources if "=" in text]
    args.sources = [Path(text) for text in args.sources if "=" not in text]
    if args.top < 1:
        parser.error(f"--top {args.top}: must be at least 1")
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: at least 2 (an interval needs two values)")
    if bool(args.study) == bool(args.sources):
        parser.error("name the sweep: its directories, or --study NAME (with --storage)")
    check_study_arguments(parser, args)
    return args


def source_runs(args: argparse.Namespace) -> tuple[list[Run], list[Path], Path]:
    """The sweep's runs, the directories they were read from, and the default place of the confirmation."""
    if args.study:
        directories, warnings = study_run_dirs(args.study, args.storage, Path.cwd())
        out = Path("multirun") / f"{args.study}-confirmation"
    else:
        directories = [match for path in args.sources for match in expand(path)]
        if missing := [str(d) for d in directories if not d.is_dir()]:
            raise ConfirmError(f"no such directory: {', '.join(missing)}")
        warnings = []
        out = directories[0].with_name(f"{directories[0].resolve().name}-confirmation")
    runs, run_warnings = load_runs(directories)
    for warning in warnings + run_warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return runs, directories, out


def sweep_runs(runs: Sequence[Run], directories: Sequence[Path], out: Path, default_out: Path) -> list[Run]:
    """The sweep's runs without the reruns already in `out` (a glob of the sweep's directories may name
    it). The reruns go beside the sweep: inside one of its directories they would be read back as its
    runs (and the verdict written into a run's directory); around all of them, no run would be left."""
    if out.exists() and not out.is_dir():
        raise ConfirmError(f"--out {out}: a file, not a directory")
    beside = f"the reruns go beside the sweep (by default in {relative(default_out)})"
    target = out.resolve()
    for directory in [*directories, *(run.directory for run in runs)]:
        if directory.resolve() in target.parents:
            raise ConfirmError(
                f"--out {out}: inside {relative(directory)}, a directory of the sweep; {beside}"
            )
    if not runs:
        where = ", ".join(map(relative, directories)) or "the study"
        raise ConfirmError(
            f"no runs in {where}: nothing to confirm (a run directory holds metrics.json and .hydra/)"
        )
    kept = [run for run in runs if target not in run.directory.resolve().parents]
    if not kept:
        raise ConfirmError(f"--out {out}: holds every run of the sweep; {beside}")
    return kept


def optimized_metric(runs: Sequence[Run]) -> str:
    metrics = {str(run.params.get("optimized_metric", DEFAULT_METRIC)) for run in runs}
    if len(metrics) > 1:
        raise ConfirmError(
            f"the runs optimized different metrics ({', '.join(sorted(metrics))}): confirm one sweep"
        )
    return metrics.pop()


def top_settings(runs: Sequence[Run], metric: str, top: int) -> list[Setting]:
    """The sweep's best settings by their best completed run (the value the sweep reported); refused
    when the completed runs are not comparable."""
    completed = [
        run for run in runs if run.status == STATUS_COMPLETED and run.metrics.get(metric) is not None
    ]
    if not completed:
        raise ConfirmError(f"no completed run with {metric} in the sweep: nothing to confirm")
    groups = comparability_groups(completed)
    if len(groups) > 1:
        described = "; ".join(describe_groups(groups))
        raise ConfirmError(
            f"the runs are not comparable (different data, model or epochs: {described}): confirm one sweep"
        )
    settings = group_by_setting(completed)
    settings.sort(key=lambda s: -max(s.values(metric)))
    return settings[:top]


def confirmation_seeds(runs: Sequence[Run], count: int) -> list[int]:
    """The first `count` non-negative integers no run of the sweep used as its seed."""
    used = {run.params.get(SEED_KEY) for run in runs}
    seeds, candidate = [], 0
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def consecutive(seeds: list[int]) -> bool:
    """They are, unless a resume left some out."""
    return seeds == list(range(seeds[0], seeds[-1] + 1))


def seeds_override(seeds: list[int]) -> str:
    """The seeds as a sweep's value: `range(a,b)` when they are consecutive, which a command line holds
    however many they are (a list of 20,000 seeds exceeded the 128 kB an argument may have: a traceback)."""
    if len(seeds) > 2 and consecutive(seeds):
        return f"range({seeds[0]},{seeds[-1] + 1})"
    return ",".join(map(str, seeds))


def described_seeds(seeds: list[int]) -> str:
    if len(seeds) > 10 and consecutive(seeds):
        return f"{seeds[0]} to {seeds[-1]}"
    return ", ".join(map(str, seeds))


def setting_id(setting: Setting) -> str:
    return hashlib.sha256(repr(sorted(setting.params.items())).encode()).hexdigest()[:8]


def completed_seeds(setting_dir: Path, setting: Setting) -> set:
    """Seeds completed in a setting's directory; the directories of runs that did not complete (an
    interrupted confirmation), or that trained something else than the sweep's runs (other data), are
    removed, so that their seed is trained again from scratch."""
    runs, _ = load_runs([setting_dir]) if setting_dir.is_dir() else ([], [])
    expected = trained_by_sweep(setting)
    done = set()
    for run in runs:
        if run.status == STATUS_COMPLETED and run.comparability() == expected:
            done.add(run.params.get(SEED_KEY))
            continue
        why = run.status if run.status != STATUS_COMPLETED else "other data than the sweep's"
        print(f"{relative(run.directory)}: {why}, trained again", file=sys.stderr)
        shutil.rmtree(run.directory)
    return done


def setting_dir(out: Path, setting: Setting) -> Path:
    return out / f"setting-{setting_id(setting)}"


def rerun(settings: list[Setting], seeds: list[int], out: Path, overrides: list[str], lock: int) -> None:
    """Train the seeds the settings lack, as one Hydra multirun of `python -m src.train` over settings and
    seeds: each setting's config is an option of RERUN_GROUP (src/rerun.py), so the launcher gets every
    rerun at once (the batched one trains them as one stack, joblib's two at a time)."""
    from src.rerun import override_value, rerun_config, write_rerun_config

    options = []
    for setting in settings:
        source, directory = setting.runs[0].directory, setting_dir(out, setting)
        config = rerun_config(source, leave_out=SET_BY_CONFIRMATION)
        # One directory per seed, named by it: a rerun adds the seeds it lacks beside the others.
        config["hydra"] = {"sweep": {"subdir": f"{directory.name}/seed_${{{SEED_KEY}}}"}}
        write_rerun_config(out / RERUN_CONFIGS / RERUN_GROUP / f"{directory.name}.yaml", config)
        options.append(directory.name)
        print(
            f"{relative(directory)}: seeds {described_seeds(seeds)} (as {relative(source)})",
            file=sys.stderr,
        )
    command = [
        sys.executable,
        "-m",
        "src.train",
        "--multirun",
        "--config-dir",
        str((out / RERUN_CONFIGS).resolve()),
        f"+{RERUN_GROUP}={','.join(options)}",
        f"{SEED_KEY}={seeds_override(seeds)}",
        f"trainer.prefix_cache={override_value(str((out / '.prefix_cache').resolve()))}",
        f"hydra.sweep.dir={override_value(str(out))}",
        "overwrite=true",
        *overrides,
    ]
    # stdout is the verdict's; the lock's descriptor stays open in the reruns' process
    with subprocess.Popen(command, stdout=sys.stderr, pass_fds=(lock,)) as reruns:
        try:
            returncode = reruns.wait()
        except KeyboardInterrupt:  # the reruns have it too: they end as interrupted, their files written
            if terminated():  # a SIGTERM may have been sent to this process alone (kill PID)
                reruns.send_signal(signal.SIGTERM)  # (they ignore a second one)
            reruns.wait()  # (subprocess.run would kill them after 0.25 s)
            raise
    if returncode == 2:  # src.train refused its command line or config, before any run
        raise ConfirmError(f"the reruns in {out} were refused (see above): nothing was trained")
    if returncode != 0:
        raise ConfirmError(f"the reruns in {out} failed (see above); run the same command again to resume")


@contextmanager
def one_confirmation_at_a_time(out: Path) -> Iterator[int]:
    """Two confirmations into one directory would train the same reruns at once, and each would remove the
    other's unfinished runs as interrupted ones: the second stops in one line instead. The lock is the
    open file's: the reruns' process is handed it too (rerun()), so a confirmation killed alone keeps its
    directory locked until its reruns end. Yields the lock's file descriptor."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfirmError(
            f"{relative(out)} cannot be written ({error.strerror}): give --out a directory that can"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfirmError(
                f"{relative(out)} is in use by another python -m src.confirm: wait until it ends, or give "
                "--out another directory"
            ) from None
        yield descriptor
    finally:
        os.close(descriptor)


def confirm_settings(
    settings: list[Setting], seeds: list[int], metric: str, out: Path, overrides: list[str], lock: int
) -> tuple[list[Setting], int]:
    """Each setting's reruns at `seeds`, trained where they lack (one multirun for the settings that lack
    the same seeds: usually all of them, or none), and how many were trained now."""
    lacking: dict[tuple[int, ...], list[Setting]] = {}
    for setting in settings:
        directory = setting_dir(out, setting)
        if missing := [seed for seed in seeds if seed not in completed_seeds(directory, setting)]:
            lacking.setdefault(tuple(missing), []).append(setting)
        else:
            print(
                f"{relative(directory)}: seeds {described_seeds(seeds)} already completed",
                file=sys.stderr,
            )
    trained_now = 0
    for missing, group in lacking.items():
        rerun(group, list(missing), out, overrides, lock)
        trained_now += len(missing) * len(group)
    confirmed = []
    for setting in settings:
        directory = setting_dir(out, setting)
        reruns = [r for s in group_by_setting(load_runs([directory])[0]) for r in s.runs]
        confirmed.append(Setting([run for run in reruns if run.params.get(SEED_KEY) in seeds]))
        if len(confirmed[-1].values(metric)) < 2:
            raise ConfirmError(f"{directory}: fewer than 2 completed reruns; run the command again")
        check_same_data(setting, confirmed[-1])
    return confirmed, trained_now


def report(
    settings: list[Setting], confirmed: list[Setting], names: list[str], metric: str, sweep: dict
) -> dict[str, Any]:
    verdict = judge(confirmed, names, metric)
    by_name = dict(zip(names, zip(settings, confirmed, strict=True), strict=True))
    for record in verdict["settings"]:
        original, rerun_setting = by_name[record["name"]]
        record["params"] = original.params
        record["seeds"] = rerun_setting.seeds
        record["sweep_value"] = max(original.values(metric))
        record["sweep_runs"] = [relative(run.directory) for run in original.runs]
        record["runs"] = [relative(run.directory) for run in rerun_setting.runs]
    return {"sweep": sweep, **verdict}


def table(verdict: dict[str, Any]) -> tuple[list[str], list[list]]:
    """The settings best first: seeds, the sweep's value, the confirmed mean, sd and interval, the bias."""
    metric = verdict["metric"]
    header = ["setting", "seeds", f"sweep {metric}", f"{metric} mean", "sd", "95% CI", "bias"]
    rows = []
    for record in verdict["settings"]:
        interval = "-" if record["ci95"] is None else f"{record['ci95'][0]:.2f} to {record['ci95'][1]:.2f}"
        rows.append(
            [
                record["name"],
                str(record["n"]),
                f"{record['sweep_value']:.2f}",
                f"{record['mean']:.2f}",
                "-" if record["sd"] is None else f"{record['sd']:.2f}",
                interval,
                f"{record['sweep_value'] - record['mean']:+.2f}",
            ]
        )
    return header, rows


def describe(verdict: dict[str, Any], markdown: bool) -> str:
    header, rows = table(verdict)
    lines = [render_markdown(header, rows) if markdown else render_text(header, rows), ""]
    lines += [f"- {c['verdict']}" if markdown else c["verdict"] for c in verdict["comparisons"]]
    if test := verdict["best_test_acc"]:
        interval = f", 95% CI {test['ci95'][0]:.2f} to {test['ci95'][1]:.2f}" if test["ci95"] else ""
        lines.append(
            f"{'- ' if markdown else ''}test accuracy of {verdict['best']} (reported, not used to choose): "
            f"{test['mean']:.2f}{interval} over {test['n']} seeds"
        )
    effort = verdict["reruns"]
    lines.append(
        f"{'- ' if markdown else ''}{effort['runs']} reruns, {effort['trained_now']} of them trained now in "
        f"{effort['wall_time_s']} s; {effort['epochs_reused']} of their {effort['epochs']} epochs shared"
    )
    lines.append(
        f"{'- ' if markdown else ''}intervals: {verdict['interval']}; comparisons: {verdict['test']}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        check_rerun_overrides(args.overrides)
        runs, directories, default_out = source_runs(args)
        out = args.out or default_out
        runs = sweep_runs(runs, directories, out, default_out)
        metric = optimized_metric(runs)
        if args.best_per:
            check_key("--best-per", args.best_per, runs)  # a typo would rerun the overall best instead
        candidates = best_per(runs, args.best_per, sort_key(metric, False)) if args.best_per else runs
        settings = top_settings(candidates, metric, args.top)
        seeds = confirmation_seeds(runs, args.seeds)
        with one_confirmation_at_a_time(out) as lock:
            confirmed, trained_now = confirm_settings(settings, seeds, metric, out, args.overrides, lock)
    except (ConfirmError, StudyError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = setting_names(settings, parameter_formatter)
    reruns = [run for setting in confirmed for run in setting.runs]
    effort = {
        "runs": len(reruns),
        "epochs": sum(int(run.metrics.get(Summary.EPOCHS_COMPLETED) or 0) for run in reruns),
        "epochs_reused": sum(int(run.metrics.get(Summary.EPOCHS_REUSED) or 0) for run in reruns),
        "trained_now": trained_now,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    sweep = {
        "runs": len(runs),
        "study": args.study,
        "directories": [str(p) for p in args.sources],
        "seeds": seeds,
    }
    verdict = {**report(settings, confirmed, names, metric, sweep), "reruns": effort}
    write_text_atomically(out / CONFIRMATION_FILE, yaml.safe_dump(verdict, sort_keys=False))
    text = describe(verdict, args.markdown)
    if args.markdown:
        write_text_atomically(out / "confirmation.md", text + "\n")
    from src.confirm_plot import plot_confirmation

    plot_confirmation(out / "confirmation.png", verdict, confirmed, names)
    print(text)
    print(
        f"written: {relative(out / CONFIRMATION_FILE)}, {relative(out / 'confirmation.png')}", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    report_interrupts_in_one_line()
    sys.exit(main())
