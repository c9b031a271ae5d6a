"""Settings rerun over seeds, judged: each one's interval, and whether the best beats each other one.

Used by `python -m src.confirm` and by `python -m src.compare --over-seeds`. The best setting is the one
with the highest mean of the chosen validation metric; it is compared with every other setting on the
seeds both ran (src/seed_statistics.py). Test accuracy is never used to choose.
"""

from collections.abc import Callable, Sequence
from typing import Any

import yaml

from src.run_record import Summary
from src.runs import setting_overrides
from src.seed_groups import SEED_KEY, Setting
from src.seed_statistics import CI_METHOD, TEST_METHOD, Estimate, Paired, estimate, paired


def setting_names(settings: Sequence[Setting], format_parameter: Callable[[list], Callable]) -> list[str]:
    """Each setting as what sets it apart from the others: the overrides its runs were given (a sweep's
    searched values, `scheduler=onecycle max_lr=0.003061`) that not all settings share, or, for runs without
    recorded overrides, its differing config values."""
    given = [overrides_of(setting) for setting in settings]
    if all(given):
        keys = list(dict.fromkeys(key for overrides in given for key in overrides))
        shown = [key for key in keys if len({repr(overrides.get(key)) for overrides in given}) > 1]
        values = {key: [overrides.get(key) for overrides in given] for key in shown}
    else:
        keys = sorted({key for s in settings for key in s.params})
        shown = [key for key in keys if len({repr(s.params.get(key)) for s in settings}) > 1]
        values = {key: [s.params.get(key) for s in settings] for key in shown}
    formatters = {key: format_parameter(values[key]) for key in shown}
    short = {key: key.rsplit(".", 1)[-1] for key in shown}
    if len(set(short.values())) < len(short):
        short = {key: key for key in shown}
    return [
        " ".join(
            f"{short[key]}={formatters[key](values[key][i])}" for key in shown if values[key][i] is not None
        )
        or "the setting"
        for i in range(len(settings))
    ]


def overrides_of(setting: Setting) -> dict[str, Any]:
    """The setting overrides of its first run (metrics.json), values parsed as YAML: {} when not recorded."""
    overrides = setting.runs[0].metrics.get(Summary.OVERRIDES) if setting.runs else None
    if not isinstance(overrides, list):
        return {}
    parsed = {}
    for override in setting_overrides(map(str, overrides)):
        key, _, text = override.lstrip("+").partition("=")
        if key != SEED_KEY:
            try:
                parsed[key] = yaml.safe_load(text)
            except yaml.YAMLError:
                parsed[key] = text
    return parsed


def by_seed(setting: Setting, metric: str) -> dict[Any, float]:
    return {
        run.params.get(SEED_KEY): run.metrics[metric]
        for run in setting.runs
        if isinstance(run.metrics.get(metric), int | float)
    }


def judge(settings: Sequence[Setting], names: Sequence[str], metric: str) -> dict[str, Any]:
    """The verdict as a record (confirmation.yaml): the settings best first, each with its estimate, and
    the best one's paired comparison with each other one, as numbers and as a sentence."""
    estimates = [estimate(list(by_seed(s, metric).values())) for s in settings]
    order = sorted(range(len(settings)), key=lambda i: -estimates[i].mean)
    best = order[0]
    comparisons = []
    for other in order[1:]:
        result = paired(by_seed(settings[best], metric), by_seed(settings[other], metric))
        comparisons.append(
            {
                "setting": names[best],
                "versus": names[other],
                **paired_record(result),
                "verdict": sentence(names[best], names[other], result, len(settings[best].runs)),
            }
        )
    test_values = list(by_seed(settings[best], Summary.TEST_ACC).values())
    winner_test = estimate(test_values) if test_values else None
    return {
        "metric": metric,
        "interval": CI_METHOD,
        "test": TEST_METHOD,
        "settings": [{"name": names[i], **estimate_record(estimates[i])} for i in order],
        "best": names[best],
        "comparisons": comparisons,
        "best_test_acc": estimate_record(winner_test) if winner_test else None,
    }


def estimate_record(value: Estimate) -> dict[str, Any]:
    return {
        "n": value.n,
        "mean": value.mean,
        "sd": value.sd,
        "ci95": None if value.low is None else [value.low, value.high],
    }


def paired_record(result: Paired) -> dict[str, Any]:
    difference = result.difference
    return {
        "common_seeds": list(result.seeds),
        "difference": difference.mean if result.seeds else None,
        "difference_ci95": None if difference.low is None else [difference.low, difference.high],
        "p_value": result.p_value,
        "told_apart": result.told_apart,
        "seeds_needed": result.seeds_needed,
    }


def sentence(best: str, other: str, result: Paired, best_seeds: int) -> str:
    """The comparison in words, e.g. `step_size=5 beats step_size=3 by 0.12 ± 0.09 points (95% CI),
    p=0.03 on 5 paired seeds`."""
    n = len(result.seeds)
    if n < 2:
        return f"{best} and {other} share {n} seed{'s' * (n != 1)}: too few to compare"
    difference = result.difference
    spread = f"{difference.mean:.2f} ± {difference.half_width:.2f} points (95% CI)"
    evidence = f"p={result.p_value:.2g} on {n} paired seeds"
    if n < best_seeds:
        evidence += f" (only the seeds both ran: {', '.join(map(str, result.seeds))})"
    if result.told_apart:
        return f"{best} beats {other} by {spread}, {evidence}"
    needed = (
        f"; about {result.seeds_needed} paired seeds would likely tell (80% power)"
        if result.seeds_needed
        else "; no realistic number of seeds would tell them apart"
    )
    return f"{best} cannot be told apart from {other}: difference {spread}, {evidence}{needed}"
