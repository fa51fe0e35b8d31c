"""A user's own Optuna sampler, outside the flashsearch package: named by `_target_` in a YAML, it drives a search.

Greedy-width: random search, except that it always proposes the widest width of the space. Every trial it
samples carries its `tag` in a system attribute, so a test can tell its proposals from anyone else's.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import BaseSampler, RandomSampler


class WidestRandomSampler(BaseSampler):
    def __init__(self, space: Any, tag: str = "widest", seed: int | None = None) -> None:
        self.space = space                  # flashsearch passes the run's SearchSpace: the constructor takes it
        self.tag = tag
        self._random = RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        study._storage.set_trial_system_attr(trial._trial_id, "user_sampler", self.tag)
        if param_name == "d_model":
            return max(self.space.widths)
        return self._random.sample_independent(study, trial, param_name, param_distribution)
