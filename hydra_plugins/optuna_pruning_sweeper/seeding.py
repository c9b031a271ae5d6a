"""A sampler whose randomness continues a study instead of restarting it.

A sampler built once with `seed: 42` draws the same start-up points in every process that builds it:
a resumed or extended study repeats its first trials, and two workers on one study propose the same
parameters. Here the configured sampler is built anew for each trial, with a seed derived from the
configured seed and the trial's number. A trial's random draws depend only on those two (and, once
the sampler models the history, on the trials before it), so a study is reproducible from its seed
and no two trials of it share a random stream, whichever process asks them.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int | None, trial_number: int) -> int | None:
    """The seed of one trial's sampler: a function of the configured seed and the trial's number
    (None stays None: unseeded, as configured)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


class SeedPerTrialSampler(BaseSampler):
    """Delegates every call about a trial to a sampler made for that trial by `make(trial_seed)`."""

    def __init__(self, make: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self._make = make
        self._seed = seed
        self._by_trial: dict[int, BaseSampler] = {}

    @property
    def seed(self) -> int | None:
        return self._seed

    def for_trial(self, trial: FrozenTrial) -> BaseSampler:
        sampler = self._by_trial.get(trial.number)
        if sampler is None:
            sampler = self._by_trial[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.for_trial(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.for_trial(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.for_trial(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.for_trial(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.for_trial(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to reseed: each trial's sampler is seeded from the trial's number."""
