"""Multi-fidelity search (search/rungs.py): the ladder's validation, the front-aware asynchronous promotion rule,
the driver running promotions with every sampler, equal-rung comparisons, and rung checkpoints that continue a
training exactly."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from factories import full_size_genome, run_config
from flashsearch.pareto import pareto_front
from flashsearch.trials import trials_frame
from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality.short_train import ShortTrain
from flashsearch.proxies.quality.train_loop import rung_schedule
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.search.population import PopulationView
from flashsearch.search.rungs import (Ladder, RungResult, ScreeningOnly, candidate_of, pareto_layers, promotion_order,
                                      promotions, rung_of)
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = StagedSpace()
LADDER = Ladder((100, 300, 900), eta=3)


# ---- the ladder ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rungs, eta, match", [
    ([], 3, "empty ladder"), ([100, 100, 300], 3, "strictly increasing"), ([300, 100], 3, "strictly increasing"),
    ([100, 300], 1, "eta must be an integer >= 2"), ([100, 300], 2.5, "eta"), ([0, 300], 3, "positive"),
    ([100, 300], 3, "must end at budget.tokens"),
])
def test_bad_ladders_are_one_line_errors(rungs, eta, match) -> None:
    with pytest.raises(FlashsearchError, match=match) as e:
        Ladder.of(rungs, eta, top=900, n_rungs=0 if not rungs else 3)
    assert "\n" not in str(e.value)


def test_default_ladder_follows_budget_tokens() -> None:
    assert Ladder.of([], 3, top=294912).tokens == (32768, 98304, 294912)
    assert Ladder.of([], 2, top=1000, n_rungs=2).tokens == (500, 1000)
    assert Ladder.of([], 3, top=5, n_rungs=1).tokens == (5,)
    with pytest.raises(FlashsearchError, match="too small"):
        Ladder.of([], 3, top=5, n_rungs=3)


@pytest.mark.parametrize("override, match", [
    ("budget.n_rungs=0", "empty ladder"), ("budget.rungs=[98304,32768,294912]", "strictly increasing"),
    ("budget.eta=1", "eta must be an integer >= 2"),
])
def test_bad_rung_settings_exit_2_with_one_line(tmp_path, override, match) -> None:
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", "search_spaces/hybrid_1b.yaml",
                        "search.fidelity=multi", override, f"out_dir={out}"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


# ---- the promotion rule -------------------------------------------------------------------------------------------
def brute_layers(points):
    remaining, layer, out = set(range(len(points))), 0, [None] * len(points)
    while remaining:
        front = {i for i in remaining if not any(
            points[j][0] <= points[i][0] and points[j][1] <= points[i][1] and points[j] != points[i]
            for j in remaining)}
        for i in front:
            out[i] = layer
        remaining -= front
        layer += 1
    return out


def test_pareto_layers_match_brute_force() -> None:
    rng = random.Random(0)
    for n in (1, 2, 7, 40):
        pts = [(rng.random(), rng.random()) for _ in range(n)]
        assert pareto_layers(pts) == brute_layers(pts)


def test_promotion_is_region_aware_not_loss_only() -> None:
    """Six slow, good models and three fast, mediocre ones: a loss ranking promotes only slow ones; the rule
    promotes the fast end of the front too."""
    slow = [RungResult(i, 0, 2.0 + 0.01 * i, 20.0 + i) for i in range(6)]
    fast = [RungResult(10 + i, 0, 3.0 + 0.1 * i, 5.0 + i) for i in range(3)]
    results = slow + fast
    by_loss = sorted(results, key=lambda r: r.loss)[:3]
    assert all(r.candidate < 10 for r in by_loss)
    promoted = {c for c, _ in promotions(results, set(), LADDER)}
    assert len(promoted) == len(results) // 3
    assert 10 in promoted and 0 in promoted        # both ends of the front
    layer0 = {r.candidate for r, k in zip(results, pareto_layers([(r.latency, r.loss) for r in results])) if k == 0}
    assert layer0 <= promoted                       # the whole front first


def test_promotion_is_asynchronous_and_never_repeats() -> None:
    results = [RungResult(0, 0, 3.0, 10.0), RungResult(1, 0, 2.0, 10.0)]
    assert promotions(results, set(), LADDER) == []            # 2 // 3 = 0: nothing yet
    results.append(RungResult(2, 0, 2.5, 9.0))
    first = promotions(results, set(), LADDER)
    assert len(first) == 1 and first[0][1] == 1                # a third result promotes one at once
    assert promotions(results, set(first), LADDER) == []       # already promoted: not again
    # a rung-1 result never goes straight to rung 2 alone, and the top rung promotes nothing
    top = [RungResult(c, 2, 1.0, 1.0) for c in range(9)]
    assert promotions(top, set(), LADDER) == []


def test_target_mode_ranks_by_loss_among_feasible() -> None:
    rs = [RungResult(0, 0, 1.0, 20.0), RungResult(1, 0, 2.0, 9.0), RungResult(2, 0, 3.0, 8.0)]
    assert [r.candidate for r in promotion_order(rs, target_latency=10.0)] == [1, 2, 0]


# ---- the driver -----------------------------------------------------------------------------------------------
class RungEval:
    """Fake proxy: loss falls with the rung (more training), by a genome-dependent amount; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.lock = threading.Lock()

    def __call__(self, genome_json: str, rung: int | None = None) -> dict:
        g = Genome.from_json(genome_json)
        with self.lock:
            self.calls.append((g.id, rung))
        base = 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention")
        k = rung or 0
        return {"loss": base - 0.3 * k - 0.01 * k * g.n_layers, "latency": g.n_layers * g.d_model / 1000.0,
                "latency_source": "toy"}


def make_study(sampler) -> optuna.Study:
    return optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)


SAMPLERS = {
    "aging": lambda: AgingEvolutionSampler(SPACE, population=6, sample_size=3, seed=0),
    "random": lambda: ScreeningOnly(optuna.samplers.RandomSampler(seed=0)),
    "nsga2": lambda: ScreeningOnly(optuna.samplers.NSGAIISampler(population_size=6, seed=0)),
    "tpe": lambda: ScreeningOnly(optuna.samplers.TPESampler(seed=0, n_startup_trials=6)),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_driver_runs_the_ladder_with_every_sampler(name) -> None:
    ev = RungEval()
    study = make_study(SAMPLERS[name]())
    summary = run_search(study, SPACE, ev, run_config(18, 3, ladder=LADDER))
    assert summary.ok and summary.complete == 18
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    screening = [t for t in trials if rung_of(t) == 0 and "cached_from" not in t.user_attrs]
    assert len(screening) == 18 and all(t.user_attrs["top_rung"] == 2 for t in screening)
    pairs = [(candidate_of(t), rung_of(t)) for t in trials if "cached_from" not in t.user_attrs]
    assert len(pairs) == len(set(pairs))                              # nothing trained twice
    n1 = sum(1 for _, k in pairs if k == 1)
    n2 = sum(1 for _, k in pairs if k == 2)
    assert n1 == 18 // 3 and n2 == n1 // 3 and summary.promoted == n1 + n2
    for c, k in pairs:                                                # a promotion follows its rung below
        assert k == 0 or (c, k - 1) in pairs
    assert {r for _, r in ev.calls} == {0, 1, 2}
    df = trials_frame(study)
    front = pareto_front(df)
    assert not front.empty and (front["rung"] == 2).all()             # the front: top rung only
    assert df["rung"].notna().all()


def test_baseline_samplers_see_one_entry_per_trial_number_and_no_promotion() -> None:
    """Optuna's GA samplers index the unfiltered trial list by trial number: the screening view must keep every
    position (a promotion as a FAILed copy), or NSGA-II fails with an IndexError once a promotion runs."""
    from flashsearch.search import attrs
    from flashsearch.search.rungs import _ScreeningStudy

    study = make_study(optuna.samplers.RandomSampler(seed=0))
    for i in range(3):
        study.tell(study.ask(), [float(i), 1.0])
    promo = study.ask()
    promo.set_user_attr(attrs.RUNG, 1)
    promo.set_user_attr(attrs.CANDIDATE, 0)                  # still running, as while its longer training runs
    study.tell(study.ask(), [5.0, 1.0])
    view = _ScreeningStudy(study)
    every = view._get_trials(deepcopy=False, use_cache=True)
    assert [t.number for t in every] == list(range(5))
    assert every[3].state == TrialState.FAIL and study.trials[3].state == TrialState.RUNNING  # a copy
    done = view.get_trials(states=(TrialState.COMPLETE,))
    assert [t.number for t in done] == [0, 1, 2, 4]
    nsga = ScreeningOnly(optuna.samplers.NSGAIISampler(population_size=2, seed=0))
    study.sampler = nsga
    study.tell(study.ask(), [0.5, 0.5])                      # samples with the promotion still running


def test_aging_population_has_one_member_per_candidate_compared_at_equal_rungs() -> None:
    study = make_study(AgingEvolutionSampler(SPACE, population=6, sample_size=3, seed=0))
    run_search(study, SPACE, RungEval(), run_config(12, 2, ladder=LADDER))
    sampler = study.sampler
    digest = sampler._view(study)
    members = digest.newest(100)
    assert all(rung_of(t) == 0 for t in members) and len(members) == 12
    promoted = [t for t in members if t.number in digest.rungs]
    plain = [t for t in members if t.number not in digest.rungs]
    assert promoted and plain
    # A tournament of promoted members compares rung-1 losses; one with a never-promoted member compares rung 0.
    pair = promoted[:2] if len(promoted) > 1 else promoted
    common = min(max(digest.rungs[t.number]) for t in pair)
    pool, _ = digest.members(pair, members)
    assert common >= 1 and [m.loss for m in pool] == [digest.rungs[t.number][common][0] for t in pair]
    pool, population = digest.members([promoted[0], plain[0]], members)
    assert [m.loss for m in pool] == [float(promoted[0].values[0]), float(plain[0].values[0])]
    assert len(population) == len(members)


def test_baselines_see_screening_trials_only() -> None:
    study = make_study(ScreeningOnly(optuna.samplers.RandomSampler(seed=1)))
    run_search(study, SPACE, RungEval(), run_config(9, 1, ladder=LADDER))
    from flashsearch.search.rungs import _ScreeningStudy

    view = _ScreeningStudy(study)
    every = view._get_trials(deepcopy=False)
    assert len(every) == len(study.get_trials(deepcopy=False)) > 9            # one entry per trial number
    assert sum(t.state == TrialState.COMPLETE for t in every) == 9            # of which the screenings count
    assert len(view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 9


def test_single_fidelity_is_unchanged() -> None:
    ev = RungEval()
    study = make_study(AgingEvolutionSampler(SPACE, population=4, sample_size=2, seed=0))
    run_search(study, SPACE, ev, run_config(8, 2))
    assert {r for _, r in ev.calls} == {None}
    assert all("rung" not in t.user_attrs for t in study.get_trials())
    assert len(pareto_front(trials_frame(study))) >= 1


# ---- checkpoints: continuing equals training straight through -------------------------------------------------------
HYBRID = full_size_genome(d_model=1024)


def test_checkpoint_continuation_gives_the_uninterrupted_loss(tmp_path) -> None:
    proxy = ShortTrain(seq_len=32, batch_size=4, eval_batches=2, log_every=3)
    tps = 32 * 4
    ladder = (6 * tps, 15 * tps, 27 * tps)
    staged = [proxy.evaluate(HYBRID, Budget(tokens=t, ladder=ladder, checkpoint_dir=str(tmp_path))) for t in ladder]
    straight = proxy.evaluate(HYBRID, Budget(tokens=ladder[2], ladder=ladder))
    assert staged[2].loss == straight.loss and staged[2].curve == straight.curve
    assert staged[1].extra["resumed_at_step"] > 0 and staged[2].extra["resumed_at_step"] > 0
    assert staged[2].extra["new_tokens"] < ladder[2]
    assert staged[0].loss > staged[1].loss > staged[2].loss
    # A checkpoint from other settings is ignored (trained from scratch: same result, nothing mixed).
    other = ShortTrain(seq_len=32, batch_size=4, eval_batches=2, log_every=3, lr=1e-3)
    r = other.evaluate(HYBRID, Budget(tokens=ladder[1], ladder=ladder, checkpoint_dir=str(tmp_path)))
    assert r.extra["resumed_at_step"] == 0
    # A damaged checkpoint is ignored too.
    for path in tmp_path.rglob("rung1-*.safetensors"):
        path.write_bytes(b"not a checkpoint")
    r = proxy.evaluate(HYBRID, Budget(tokens=ladder[2], ladder=ladder, checkpoint_dir=str(tmp_path)))
    assert r.extra["resumed_at_step"] == 0 and r.loss == straight.loss


def test_wsd_schedule_shares_warmup_and_stable_phase() -> None:
    proxy = ShortTrain(seq_len=32, batch_size=4)
    tps = 32 * 4
    ladder = (10 * tps, 30 * tps, 90 * tps)
    scheds = [rung_schedule(proxy.config, Budget(tokens=t, ladder=ladder))[0] for t in ladder]
    for a, b in itertools.pairwise(scheds):
        assert all(a(s) == b(s) for s in range(a.stable_end))       # same LR up to a rung's checkpoint
        assert a.stable_end < b.stable_end
    assert scheds[0](scheds[0].steps - 1) == pytest.approx(proxy.min_lr_ratio)


def test_too_few_trials_to_reach_the_top_rung_is_refused() -> None:
    from flashsearch.config import load_config

    with pytest.raises(FlashsearchError, match="needs search.trials >= 9"):
        load_config("search_spaces/hybrid_1b.yaml", ["search.trials=5"])
    cfg = load_config("search_spaces/hybrid_1b.yaml", ["search.trials=5", "budget.n_rungs=2"])
    assert cfg.budget.n_rungs == 2


def test_target_mode_promotes_feasible_candidates_and_ranks_top_rung_results() -> None:
    from flashsearch.pareto import rank_front

    def latency(g: Genome) -> float:
        return g.n_layers * g.d_model / 1000.0

    target = 40.0
    sampler = AgingEvolutionSampler(SPACE, population=6, sample_size=3, seed=0, target_latency=target,
                                    latency_fn=latency)
    study = make_study(sampler)
    summary = run_search(study, SPACE, RungEval(), run_config(18, 2, ladder=LADDER, target_latency=target))
    assert summary.ok
    promoted = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if rung_of(t) > 0]
    assert promoted and all(t.values[1] <= target for t in promoted)
    ranked = rank_front(trials_frame(study), target)
    assert (ranked["rung"] == 2).all() and bool(ranked["meets_target"].iloc[0])


def test_ranking_shows_each_front_candidate_s_losses_by_rung() -> None:
    from flashsearch.report import ranking_markdown, rung_history

    study = make_study(AgingEvolutionSampler(SPACE, population=6, sample_size=3, seed=0))
    run_search(study, SPACE, RungEval(), run_config(9, 1, ladder=LADDER))
    df = trials_frame(study)
    history = rung_history(df)
    top = df[(df["rung"] == 2) & (df["state"] == "COMPLETE")]
    assert len(top) == 1
    c = int(top["candidate"].iloc[0])
    assert history[c].count("->") == 2 and history[c].endswith(f"{top['quality'].iloc[0]:.3f}")
    md = ranking_markdown(df)
    assert "loss by rung" in md and history[c] in md and "only the 1 results at the top rung" in md


def test_eta_counts_the_promotions_still_to_come() -> None:
    from flashsearch.search.summary import Best, RunState

    run = RunState(n_trials=27, t0=0.0, progress=None, best=Best(None), ladder=Ladder((100, 300, 900), 3))
    run.elapsed = lambda: 100.0                        # type: ignore[method-assign]
    run.complete, run.evaluated = 27, 27 + 9 + 2
    run.rung_seconds = {0: [10.0] * 27, 1: [20.0] * 9, 2: [60.0] * 2}
    # all screened, all 9 rung-1 promotions done, 1 of 3 rung-2 promotions left: 60 s of work, at 100 s of wall
    # per (270 + 180 + 120) s of evaluation
    assert run.eta() == pytest.approx(60.0 * 100.0 / 570.0)
    run.rung_seconds = {0: [10.0] * 27}
    run.evaluated = 27                                 # no promotion yet: their cost is estimated from rung 0's
    # at rung 0's seconds per token over each rung's whole budget: an upper bound (it ignores continuation)
    expected = 9 * 10.0 * 300 / 100 + 3 * 10.0 * 900 / 100
    assert run.eta() == pytest.approx(expected * 100.0 / 270.0)


def test_export_without_a_top_rung_result_says_why(tmp_path) -> None:
    from flashsearch.export import export_top

    class NoTopRung(RungEval):  # every top-rung training fails (and is not retried)
        def __call__(self, genome_json: str, rung: int | None = None) -> dict:
            if rung == LADDER.top:
                raise TrialFailed("out of memory at the top rung")
            return super().__call__(genome_json, rung)

    study = make_study(AgingEvolutionSampler(SPACE, population=3, sample_size=2, seed=0))
    run_search(study, SPACE, NoTopRung(), run_config(9, 1, ladder=LADDER))
    with pytest.raises(FlashsearchError, match="no candidate has reached the top rung"):
        export_top(study, tmp_path / "export", 1)
