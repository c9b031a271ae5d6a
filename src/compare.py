"""python -m src.compare [DIR ...]: a table of every run under outputs/ and multirun/ (or DIRs).

    python -m src.compare                                  every run, best validation accuracy first
    python -m src.compare multirun/2026-11-24/10-00-00     one sweep
    python -m src.compare --filter 'scheduler.gamma<0.5' --status completed --top 5
    python -m src.compare --sort test_acc --csv runs.csv --plot figures/
    python -m src.compare multirun/2026-11-25/10-00-00 --over-seeds   a row per setting, over its seeds
    python -m src.compare 'multirun/2026-11-25/*'           every sweep worker's directory of that day
    python -m src.compare --study steplr --storage sqlite:///multirun/optuna.db   the runs of a study's trials

Reads files only (no torch), so it stays fast over thousands of runs.
"""

import argparse
import contextlib
import csv
import glob
import io
import json
import math
import operator
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from src.atomic_files import write_text_atomically
from src.interrupts import report_interrupts_in_one_line
from src.run_record import DATA_SIZES, OPTIMIZED_METRICS, STATUS_COMPLETED, STATUSES, Summary
from src.runs import COMPARABILITY_KEYS, METRIC_KEYS, OPERATIONAL_KEYS, Run, load_runs, setting_overrides
from src.seed_groups import AGGREGATED_METRICS, Setting, group_by_setting
from src.study_runs import StudyError, add_study_arguments, check_study_arguments, study_run_dirs

DEFAULT_ROOTS = (Path("outputs"), Path("multirun"))
# Columns of results (shown to 2 decimals); every other column is a parameter (shown to tell values apart).
METRIC_COLUMNS = frozenset(
    {
        *METRIC_KEYS,
        "seeds",
        *AGGREGATED_METRICS,
        *(f"{metric}_{spread}" for metric in AGGREGATED_METRICS for spread in ("sd", "ci95")),
    }
)
GLOB_CHARACTERS = frozenset("*?[")
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
FILTER_PATTERN = re.compile(r"^\s*([\w.]+)\s*(<=|>=|!=|==|=|<|>)\s*(.+?)\s*$")


class UsageError(Exception):
    pass


# Operators that order: a value that is not a number would order text ("0.1" < "abc"), matching by accident.
ORDERING = ("<", "<=", ">", ">=")


def parse_filter(text: str) -> tuple[str, Callable[[Run], bool]]:
    """'KEY OP VALUE' (OP one of < <= > >= = == !=) as its key and a test of a run: numbers compare as
    numbers, the rest as text (= and != only)."""
    match = FILTER_PATTERN.match(text)
    if not match:
        raise UsageError(
            f"--filter {text!r} is not KEY OP VALUE, e.g. 'scheduler.gamma<0.5' or 'status=completed'"
        )
    key, symbol, wanted = match.groups()
    compare = OPERATORS[symbol]
    try:
        number = float(wanted)
    except ValueError:
        number = None
    if symbol in ORDERING and (number is None or math.isnan(number)):
        raise UsageError(f"--filter {text!r}: {symbol} needs a number, not {wanted} (= and != compare text)")
    if number is not None and math.isnan(number):
        raise UsageError(f"--filter {text!r}: nan equals nothing; give a number or text")

    def keep(run: Run) -> bool:
        value = run.value(key)
        if value is None:
            return False
        if number is not None:
            try:
                return compare(float(value), number)
            except (TypeError, ValueError):  # a value that is not a number: in no numeric range
                if symbol in ORDERING:
                    return False
        return compare(str(value), wanted.strip("'\""))

    return key, keep


def best_per(runs: Sequence[Run], key: str, rank_key: Callable[[Run], tuple]) -> list[Run]:
    """The best completed run for each value of `key` (within each comparable set): a schedule-families
    sweep's families, each at its best settings (--best-per scheduler)."""
    best: dict[tuple, Run] = {}
    for run in sorted((run for run in runs if run.status == STATUS_COMPLETED), key=rank_key):
        best.setdefault((run.comparability(), repr(run.value(key))), run)
    return list(best.values())


def sort_key(key: str, ascending: bool) -> Callable[[Run], tuple]:
    """Numbers largest first (smallest with ascending), then text, then runs without the key or with NaN
    (which would otherwise stop the sort at wherever it stands, even first)."""
    sign = 1.0 if ascending else -1.0

    def rank(run: Run) -> tuple:
        value = run.value(key)
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return (2, 0.0, "") if value is None else (1, 0.0, str(value))
        return (2, 0.0, "") if math.isnan(number) else (0, sign * number, "")

    return rank


DEFAULT_SORT = Summary.VAL_ACC


def check_key(option: str, key: str, runs: Sequence[Run]) -> None:
    """UsageError naming the keys there are, when no run has `key` (a typo would rank or group nothing)."""
    if any(run.has(key) for run in runs):
        return
    metrics = (Summary.VAL_ACC, Summary.BEST_VAL_ACC, Summary.TEST_ACC, Summary.WALL_TIME_S)
    examples = differing_params(runs) or sorted({k for run in runs for k in run.params})[:3]
    raise UsageError(
        f"{option} {key}: no run has it; give a metric ({', '.join(metrics)}, ... as in metrics.json) "
        f"or a config key ({', '.join(examples)}, ... as in .hydra/config.yaml)"
    )


def comparability_groups(runs: Sequence[Run]) -> dict[tuple, str]:
    """A letter per set of comparable runs (same data, model and epochs), in order of appearance."""
    groups: dict[tuple, str] = {}
    for run in runs:
        groups.setdefault(run.comparability(), chr(ord("A") + len(groups)))
    return groups


def differing_params(runs: Sequence[Run]) -> list[str]:
    """The hyperparameters (dotted config keys) that differ between the runs listed."""
    keys = sorted({k for run in runs for k in run.params if k not in OPERATIONAL_KEYS})
    return [k for k in keys if len({repr(run.params.get(k)) for run in runs}) > 1]


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def format_value(value: Any) -> str:
    """A metric as the table shows it: accuracies and times to 2 decimals, small or large numbers to 4
    significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return (
            f"{value:.4g}"
            if abs(value) < 0.01 or abs(value) >= 1000
            else f"{value:.2f}".rstrip("0").rstrip(".")
        )
    return str(value)


def parameter_formatter(values: Sequence[Any]) -> Callable[[Any], str]:
    """How to show a parameter column: numbers with the fewest significant digits, 4 or more, that still
    tell its distinct values apart (gammas 0.0934 and 0.0858 are not both 0.09)."""
    numbers = {v for v in values if isinstance(v, float)}
    for digits in range(4, 18):
        if len({f"{v:.{digits}g}" for v in numbers}) == len(numbers):
            break
    return lambda value: f"{value:.{digits}g}" if isinstance(value, float) else format_value(value)


def formatted_rows(header: list[str], rows: list[list]) -> list[list[str]]:
    """The cells as text: metric columns by format_value, parameter columns by parameter_formatter."""
    formatters = [
        format_value if name in METRIC_COLUMNS else parameter_formatter([row[i] for row in rows])
        for i, name in enumerate(header)
    ]
    return [[formatter(value) for formatter, value in zip(formatters, row, strict=True)] for row in rows]


def with_set_column(
    header: list[str], rows: list[list], items: Sequence, groups: dict[tuple, str]
) -> tuple[list[str], list[list]]:
    """Each row (a run's or a setting's) led by its comparable set's letter, when there are several sets."""
    if len(groups) <= 1:
        return header, rows
    letters = [groups[item.comparability()] for item in items]
    return ["set", *header], [[letter, *row] for letter, row in zip(letters, rows, strict=True)]


def table_rows(
    runs: Sequence[Run], params: Sequence[str], groups: dict[tuple, str], settings: bool = False
) -> tuple[list[str], list[list]]:
    """A row per run: its directory, status, the parameters given (or, with `settings`, the overrides that set
    what it trained: one column whatever each run's keys), and its metrics."""
    header = ["run", "status", *params, *(["settings"] if settings else []), *METRIC_KEYS]
    rows = [
        [
            relative(run.directory),
            run.status,
            *(run.params.get(k) for k in params),
            *([settings_text(run)] if settings else []),
            *(run.metrics.get(k) for k in METRIC_KEYS),
        ]
        for run in runs
    ]
    return with_set_column(header, rows, runs, groups)


def settings_text(run: Run) -> str:
    """The run's setting overrides, numbers to 4 significant digits: `scheduler=onecycle max_lr=0.008902`."""
    overrides = run.metrics.get(Summary.OVERRIDES)
    if not isinstance(overrides, list):
        return "-"
    shown = []
    for override in setting_overrides(map(str, overrides)):
        key, _, value = override.partition("=")
        with contextlib.suppress(ValueError):
            value = value if value.isdigit() else f"{float(value):.4g}"
        shown.append(f"{key}={value}")
    return " ".join(shown) or "defaults"


def setting_rows(
    settings: Sequence[Setting], params: Sequence[str], groups: dict[tuple, str]
) -> tuple[list[str], list[list]]:
    """A row per setting: its parameters, how many seeds, each metric's mean and standard deviation."""
    metrics = [
        column for metric in AGGREGATED_METRICS for column in (metric, f"{metric}_sd", f"{metric}_ci95")
    ]
    header = [*params, "seeds", *metrics]
    rows = []
    for setting in settings:
        record = setting.record()
        params_shown = [setting.params.get(k) for k in params]
        rows.append([*params_shown, len(setting.runs), *(record[k] for k in metrics)])
    return with_set_column(header, rows, settings, groups)


def render_text(header: list[str], rows: list[list]) -> str:
    cells = [header, *formatted_rows(header, rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def render_markdown(header: list[str], rows: list[list]) -> str:
    """A GitHub table; a `|` inside a cell is escaped, so every row splits back into its cells."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, formatted_rows(header, rows))])


def as_records(runs: Sequence[Run], groups: dict[tuple, str]) -> list[dict[str, Any]]:
    return [
        {
            "run": relative(run.directory),
            "status": run.status,
            "set": groups[run.comparability()],
            **{k: run.metrics.get(k) for k in (*METRIC_KEYS, Summary.DATA_SOURCE, *DATA_SIZES)},
            "params": run.params,
        }
        for run in runs
    ]


def setting_records(settings: Sequence[Setting], verdicts: dict[int, dict]) -> list[dict[str, Any]]:
    return [
        {
            **setting.record(),
            "runs": [relative(run.directory) for run in setting.runs],
            "params": setting.params,
            "compared_with_best": verdicts.get(id(setting)),
        }
        for setting in settings
    ]


def seed_verdicts(settings: Sequence[Setting], sort: str) -> tuple[dict[int, dict], list[str]]:
    """Within each comparable set of settings, the best (by validation: --sort when it is a validation
    metric, else val_acc) against each other one on their common seeds: per setting, and as sentences."""
    from src.verdict import judge, setting_names

    metric = sort if sort in OPTIMIZED_METRICS else Summary.VAL_ACC
    by_setting, sentences = {}, []
    for kind in dict.fromkeys(setting.comparability() for setting in settings):
        members = [setting for setting in settings if setting.comparability() == kind]
        if len(members) < 2:
            continue
        names = setting_names(members, parameter_formatter)
        verdict = judge(members, names, metric)
        for comparison in verdict["comparisons"]:
            by_setting[id(members[names.index(comparison["versus"])])] = comparison
            sentences.append(comparison["verdict"])
    return by_setting, sentences


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Every value at full precision, written to a temporary file beside `path` and renamed over it (a
    failed write leaves an existing file as it was); UsageError when it cannot be written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([header, *rows])
    try:
        write_text_atomically(path, buffer.getvalue())
    except OSError as error:
        raise UsageError(f"--csv {path}: cannot write it ({error.strerror or error})") from None


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def make_plot_directory(path: Path) -> None:
    """--plot's directory; UsageError when it cannot be made."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--plot {path}: a file, not a directory")
    if not path.exists() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(
            f"--plot {path}: names a file, but --plot takes a directory to write several PNG files into "
            f"(--plot {path.parent})"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--plot {path}: cannot make the directory ({error.strerror})") from None


def every_param_table(runs: Sequence[Run], groups: dict[tuple, str]) -> tuple[list[str], list[list]]:
    """The runs' records with every parameter as a column (for --csv)."""
    records = as_records(runs, groups)
    params = sorted({k for r in records for k in r["params"]})
    base = [k for k in records[0] if k != "params"]
    return [*base, *params], [
        [*(record[k] for k in base), *(record["params"].get(k) for k in params)] for record in records
    ]


def describe_comparability(key: tuple) -> str:
    """What a Run.comparability() is made of, in words: `data_source=mnist, n_train=55000, ...`."""
    return ", ".join(f"{k}={v}" for k, v in zip(COMPARABILITY_KEYS, key, strict=True))


def describe_groups(groups: dict[tuple, str]) -> list[str]:
    return [f"set {letter}: {describe_comparability(key)}" for key, letter in groups.items()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="run or sweep directories, or quoted glob patterns (default: outputs/ multirun/)",
    )
    add_study_arguments(parser, "the run directories of this Optuna study's trials (all its workers')")
    parser.add_argument(
        "--sort", default=DEFAULT_SORT, help=f"metric or config key, largest first (default {DEFAULT_SORT})"
    )
    parser.add_argument("--ascending", action="store_true", help="smallest first")
    parser.add_argument("--top", type=int, help="show the first N runs only")
    parser.add_argument(
        "--best-per",
        metavar="KEY",
        help="the best completed run for each value of KEY, with what set it (scheduler: each family's best)",
    )
    parser.add_argument(
        "--filter", action="append", default=[], help="KEY OP VALUE, e.g. 'scheduler.gamma<0.5'"
    )
    parser.add_argument("--status", choices=STATUSES, help="only runs with this status")
    parser.add_argument(
        "--csv", type=Path, metavar="FILE", help="also write the table, every parameter, to FILE"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print a markdown table")
    output.add_argument("--json", action="store_true", help="print JSON records")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG figures into DIR")
    parser.add_argument(
        "--over-seeds",
        action="store_true",
        help="a row per setting: completed runs that differ only in trainer.seed, "
        "with each metric's mean and standard deviation over the seeds",
    )
    args = parser.parse_args(argv)
    check_study_arguments(parser, args)
    if args.top is not None and args.top < 1:
        parser.error(f"--top {args.top}: must be at least 1")
    if args.over_seeds and args.status:
        parser.error("--over-seeds takes completed runs only: drop --status")
    if args.over_seeds and args.best_per:
        parser.error("--best-per and --over-seeds: choose one")
    return args


def expand(path: Path) -> list[Path]:
    """A path as given, or the directories a quoted glob pattern matches (sorted)."""
    if path.exists() or not GLOB_CHARACTERS & set(str(path)):
        return [path]
    return [Path(match) for match in sorted(glob.glob(str(path)))] or [path]


def chosen_roots(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Where to look for runs: a study's trials, the paths given, or outputs/ and multirun/ (skipped
    quietly when absent; a directory the user names must exist)."""
    if args.study:
        return study_run_dirs(args.study, args.storage, Path.cwd())
    if args.paths:
        return [match for path in args.paths for match in expand(path)], []
    return [root for root in DEFAULT_ROOTS if root.is_dir()], []


def rank(items: list, args: argparse.Namespace) -> tuple[list, dict[tuple, str]]:
    """Runs or settings sorted by --sort within each comparable set, cut to --top; and the sets."""
    items.sort(key=sort_key(args.sort, args.ascending))
    groups = comparability_groups(items)
    items.sort(key=lambda item: groups[item.comparability()])  # stable: sorted within each comparable set
    return (items[: args.top] if args.top else items), groups


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        filters = [parse_filter(text) for text in args.filter]
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        roots, warnings = chosen_roots(args)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs, run_warnings = load_runs(roots)
    warnings += run_warnings
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not runs:
        where = f"study {args.study!r}" if args.study else ", ".join(map(str, args.paths or DEFAULT_ROOTS))
        print(
            f"error: no runs found in {where} "
            "(a run directory holds metrics.json "
            "and .hydra/; train one with python -m src.train)",
            file=sys.stderr,
        )
        return 1
    try:
        check_key("--sort", args.sort, runs)
        if args.best_per:
            check_key("--best-per", args.best_per, runs)
        for key, _ in filters:
            check_key("--filter", key, runs)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    found = len(runs)
    if args.status:
        runs = [run for run in runs if run.status == args.status]
    runs = [run for run in runs if all(keep(run) for _, keep in filters)]
    if not runs:
        print(f"warning: none of the {found} runs found passes --status and --filter", file=sys.stderr)
    if args.best_per:
        runs = best_per(runs, args.best_per, sort_key(args.sort, args.ascending))
    verdicts, sentences = {}, []
    if args.over_seeds:
        if left_out := sum(run.status != STATUS_COMPLETED for run in runs):
            print(f"warning: {left_out} runs that did not complete are left out", file=sys.stderr)
        shown, groups = rank(group_by_setting(runs), args)
        header, rows = setting_rows(shown, differing_params(shown), groups)
        verdicts, sentences = seed_verdicts(shown, args.sort)
    else:
        shown, groups = rank(runs, args)
        if args.best_per:
            header, rows = table_rows(shown, [args.best_per], groups, settings=True)
        else:
            header, rows = table_rows(shown, differing_params(shown), groups)
    try:  # before anything is printed
        if args.plot and shown:
            make_plot_directory(args.plot)
        if args.csv and shown:
            write_csv(args.csv, *((header, rows) if args.over_seeds else every_param_table(shown, groups)))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        records = setting_records(shown, verdicts) if args.over_seeds else as_records(shown, groups)
        print(json.dumps(records, indent=2, default=str))
    elif args.markdown:
        print(render_markdown(header, rows))
        print("".join(f"\n- {sentence}" for sentence in sentences), end="\n" if sentences else "")
    else:
        print(render_text(header, rows))
        print("".join(f"\n{sentence}" for sentence in sentences), end="\n" if sentences else "")
    if len(groups) > 1:
        print(
            f"warning: {len(groups)} sets of runs that are not comparable (different data, model or epochs); "
            "they are ranked separately:",
            file=sys.stderr,
        )
        for line in describe_groups(groups):
            print(f"  {line}", file=sys.stderr)
    if args.plot and shown:
        from src.compare_plots import write_plots

        plotted = [run for setting in shown for run in setting.runs] if args.over_seeds else shown
        for line in write_plots(args.plot, plotted, roots):
            print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    report_interrupts_in_one_line()
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader left (`python -m src.compare | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
