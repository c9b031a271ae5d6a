"""Runs that differ only in their seed, taken as one setting: `python -m src.compare --over-seeds`.

A sweep's best value is partly the luck of its seed. Rerun the top settings with
`trainer.seed=0,1,2,3,4` and rank them by their mean, with the spread beside it. Only completed runs
count (a pruned or failed run's metrics stop early); a seed that ran twice counts once.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from src.run_record import STATUS_COMPLETED, Summary
from src.runs import OPERATIONAL_KEYS, Run
from src.seed_statistics import estimate

SEED_KEY = "trainer.seed"
# A setting is everything else: the seed and the operational keys vary between its runs.
NOT_PART_OF_A_SETTING = (SEED_KEY, *OPERATIONAL_KEYS)
AGGREGATED_METRICS = (Summary.VAL_ACC, Summary.TEST_ACC, Summary.BEST_VAL_ACC)


@dataclass
class Setting:
    runs: list[Run]

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.runs[0].params.items() if k not in NOT_PART_OF_A_SETTING}

    @property
    def seeds(self) -> list[Any]:
        return [run.params.get(SEED_KEY) for run in self.runs]

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if run.metrics.get(metric) is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def sd(self, metric: str) -> float | None:
        """The sample standard deviation over the seeds (None for a single seed)."""
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    def value(self, key: str) -> Any:
        """A metric's mean over the seeds, `seeds` (how many), or a config key (for --sort)."""
        if key == "seeds":
            return len(self.runs)
        if key in AGGREGATED_METRICS:
            return self.mean(key)
        return self.params.get(key)

    def comparability(self) -> tuple:
        return self.runs[0].comparability()

    def ci95(self, metric: str) -> float | None:
        """Half the width of the mean's 95% t interval (src/seed_statistics.py): mean ± this."""
        values = self.values(metric)
        return estimate(values).half_width if len(values) > 1 else None

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"seeds": self.seeds}
        for metric in AGGREGATED_METRICS:
            record |= {
                metric: self.mean(metric),
                f"{metric}_sd": self.sd(metric),
                f"{metric}_ci95": self.ci95(metric),
            }
        return record


def group_by_setting(runs: Sequence[Run]) -> list[Setting]:
    """Completed runs grouped by everything but their seed, in order of first appearance."""
    settings: dict[tuple, Setting] = {}
    for run in runs:
        if run.status != STATUS_COMPLETED:
            continue
        params = tuple(sorted((k, repr(v)) for k, v in run.params.items() if k not in NOT_PART_OF_A_SETTING))
        setting = settings.setdefault((run.comparability(), params), Setting([]))
        if run.params.get(SEED_KEY) not in setting.seeds:
            setting.runs.append(run)
    for setting in settings.values():
        setting.runs.sort(key=lambda run: (run.params.get(SEED_KEY) is None, run.params.get(SEED_KEY) or 0))
    return list(settings.values())
