"""What a controller does before it searches: recover trials a stopped controller left behind, enqueue seeds.

One controller per study (runner's ControllerLock): on start, trials left RUNNING by a controller that died are
failed as "interrupted (controller stopped)" and their params re-enqueued, so they run again.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from flashsearch.errors import FlashsearchError
from flashsearch.search import attrs
from flashsearch.search.rungs import fidelity_attrs
from flashsearch.space import SearchSpace

INTERRUPTED = "interrupted (controller stopped)"


def abandon(study: optuna.Study, trial_id: int, reason: str, expected: Iterable[str] | None = None) -> bool:
    """FAIL an unfinished trial with `reason` and enqueue its params again so a later run re-evaluates it
    (unless it was stopped while being asked: then its params may be half-written; `expected` = the space's
    parameter names, to recognise complete params of a trial whose genome attribute was not yet written).

    The retry is enqueued before the FAIL is written: a controller killed between the two leaves the trial
    RUNNING with its retry already queued, and the next start (which finds the retry) only fails it. The other
    order would lose the candidate: FAILED, never re-queued, and no longer RUNNING for the next start to find."""
    t = study._storage.get_trial(trial_id)
    if t.state.is_finished():
        return False
    params = t.system_attrs.get("fixed_params") or t.params
    complete = attrs.GENOME in t.user_attrs or "fixed_params" in t.system_attrs or (
        expected is not None and set(expected) <= set(params or {}))
    # Stopped while being asked (before its genome was decided, params possibly half-written): nothing to
    # re-run; the sampler proposes afresh.
    if complete and params and not requeued(study, t.number):
        # An interrupted attempt does not count as one: keep its attempt number.
        study.enqueue_trial(dict(params), user_attrs={attrs.RETRY_OF: t.number,
                                                      "attempt": int(t.user_attrs.get(attrs.ATTEMPT, 1)),
                                                      **fidelity_attrs(t)})
    study._storage.set_trial_user_attr(trial_id, "error", reason)
    study._storage.set_trial_user_attr(trial_id, "error_kind", "interrupted")
    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return True


def requeued(study: optuna.Study, number: int) -> bool:
    """Whether a trial retrying trial `number` is already in the study (enqueued just before a kill)."""
    return any(t.user_attrs.get(attrs.RETRY_OF) == number for t in study.get_trials(deepcopy=False))


def recover_orphans(study: optuna.Study, space: SearchSpace | None = None) -> int:
    """Fail trials left RUNNING by a controller that stopped, and re-enqueue them; returns how many.

    Assumes one controller per study (the run dir's): a RUNNING trial at start has nobody working on it.
    WAITING trials (enqueued seeds / retries) need nothing: the next ask pops them.
    """
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    expected = None if space is None else list(space.distributions())
    return sum(abandon(study, t._trial_id, INTERRUPTED, expected) for t in orphans)


def enqueue_seeds(study: optuna.Study, seeds: Sequence[Mapping[str, Any]], space: SearchSpace | None = None) -> int:
    """Enqueue seed params once per study (ahead of sampled trials); returns how many were enqueued now. With
    `space`, every seed is validated first, so a bad one leaves nothing enqueued.

    Idempotent under a kill at any point: the done-marker (study attribute: how many seeds this study takes) is
    written first, then each seed not yet in the study (trials carry their `seed` index). A run killed midway
    enqueues only the missing ones on its next start; none is enqueued (and trained) twice."""
    if not seeds:
        return 0
    for i, p in enumerate(seeds):
        try:
            if space is not None:
                space.validate(p)
        except FlashsearchError as e:
            raise FlashsearchError(f"seed {i}: {e}") from None
    n = study.user_attrs.get(attrs.SEEDS_ENQUEUED)
    if n is None:
        n = len(seeds)
        study.set_user_attr(attrs.SEEDS_ENQUEUED, n)
    present = {t.user_attrs.get(attrs.SEED) for t in study.get_trials(deepcopy=False)}
    missing = [i for i in range(min(int(n), len(seeds))) if i not in present]
    for i in missing:
        study.enqueue_trial(dict(seeds[i]), user_attrs={attrs.SEED: i})
    return len(missing)


__all__ = ["abandon", "requeued", "recover_orphans", "enqueue_seeds", "INTERRUPTED"]
