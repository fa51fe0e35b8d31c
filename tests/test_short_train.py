"""Short-training quality proxy: learning on tiny budgets, determinism, failures, its config, its schedules and
the operators' proxy rules."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from factories import full_size_genome
from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.kernels import Operator, SlidingWindowAttention
from flashsearch.kernels.base import ProxyScale
from flashsearch.model import HybridLM
from flashsearch.operators import option
from flashsearch.proxies.base import Budget, QualityProxy
from flashsearch.proxies.quality.short_train import ShortTrain

HYBRID = full_size_genome(d_model=1024, op_options={"swa": {"window": 512}})


def small(**kw: object) -> ShortTrain:
    args: dict[str, object] = dict(seq_len=64, batch_size=8, eval_batches=2, log_every=5, lr=3e-3)
    args.update(kw)
    return ShortTrain(**args)  # type: ignore[arg-type]


def test_loss_falls_and_result_is_complete() -> None:
    proxy = small()
    assert isinstance(proxy, QualityProxy)
    r = proxy.evaluate(HYBRID, Budget(tokens=40 * 64 * 8))
    assert r.metric == "val_bpb" and r.extra["steps"] == 40 and r.tokens == 40 * 64 * 8
    first, last = r.curve[0][1], r.curve[-1][1]
    assert [s for s, _ in r.curve] == list(range(5, 41, 5))
    assert last < first - 1.0                     # learns well beyond noise (uniform bytes = 8 bits)
    assert r.loss < 6.0
    assert r.proxy_params > 0 and r.seconds > 0
    assert r.extra["proxy_d_model"] == 64


def test_deterministic_for_a_fixed_seed() -> None:
    budget = Budget(tokens=10 * 64 * 8)
    a = small().evaluate(HYBRID, budget)
    b = small().evaluate(HYBRID, budget)
    assert a.loss == b.loss and a.curve == b.curve
    c = small(seed=1).evaluate(HYBRID, budget)
    assert c.loss != a.loss


def test_repeats_average_consecutive_seeds() -> None:
    budget = Budget(tokens=6 * 64 * 8)
    singles = [small(seed=s).evaluate(HYBRID, budget).loss for s in (3, 4)]
    r = small(seed=3, repeats=2).evaluate(HYBRID, budget)
    assert r.loss == pytest.approx(sum(singles) / 2)
    assert r.extra["seed_losses"] == pytest.approx(singles) and r.tokens == 2 * 6 * 64 * 8


def test_divergence_is_a_failed_trial() -> None:
    with pytest.raises(TrialFailed, match=r"loss diverged to nan at step \d+"):
        small(lr=1e6).evaluate(HYBRID, Budget(tokens=10 * 64 * 8))


def test_time_limit_is_a_failed_trial() -> None:
    with pytest.raises(TrialFailed, match="time limit"):
        small().evaluate(HYBRID, Budget(tokens=10_000 * 64 * 8, time_limit_s=0.5))


def test_proxy_genome_scaling() -> None:
    proxy = ShortTrain()
    assert [proxy.proxy_d_model(d) for d in (1024, 1280, 2048, 2560)] == [64, 80, 128, 160]
    g = Genome(layer_types=("swa", "ffn", "mamba2", "ffn"), d_model=2560, n_heads=20, n_kv_heads=5, head_dim=128,
               op_options={"swa": {"window": 512}, "mamba2": {"d_state": 128, "expand": 2}})
    pg = proxy.proxy_genome(g)
    assert pg.layer_types == g.layer_types and pg.vocab_size == 256
    assert (pg.d_model, pg.head_dim, pg.n_heads) == (160, 16, 10)
    assert pg.n_kv_heads < pg.n_heads and pg.n_heads % pg.n_kv_heads == 0   # still GQA
    assert dict(pg.options("mamba2")) == {"d_state": 16, "expand": 2, "head_dim": 16, "chunk_size": 16}
    assert "chunk_size" not in ShortTrain(fast=False).proxy_genome(g).options("mamba2")   # eager: genome's own
    assert pg.options("swa")["window"] == 512 * 128 // 2048       # same share of the training context
    assert ShortTrain(swa_reference_context=None).proxy_genome(g).options("swa")["window"] == 512


def test_recipe_options_run(tmp_path: Path) -> None:
    text = tmp_path / "data.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    proxy = small(weight_norm=True, meta_tokens=4, data_path=str(text), threads=1)
    assert proxy.weight_decay is None and proxy.config.effective_weight_decay == 0.0
    before = torch.get_num_threads()
    r = proxy.evaluate(Genome(layer_types=("swa", "ffn"), d_model=512, n_heads=4, n_kv_heads=4, head_dim=128),
                       Budget(tokens=20 * 64 * 8))
    assert torch.get_num_threads() == before
    assert r.extra["data"] == str(text)
    assert r.curve[-1][1] < r.curve[0][1] - 0.5 and r.loss < 7.0


def test_bad_budget_and_data(tmp_path: Path) -> None:
    with pytest.raises(FlashsearchError, match="less than one step"):
        small().evaluate(HYBRID, Budget(tokens=10))
    with pytest.raises(FlashsearchError, match="does not exist"):
        small(data_path=str(tmp_path / "nope.jsonl")).evaluate(HYBRID, Budget(tokens=64 * 8))


def test_a_forked_child_does_not_inherit_a_held_lock() -> None:
    """The studies' job pool forks; a thread-backend evaluation may hold the init, thread-count or corpus lock at
    that moment. The child must get free locks (else its first training waits forever, as a hung job pool once
    did) and count no running evaluation."""
    import os

    from flashsearch.proxies.quality import short_train, threads, train_loop

    with train_loop._INIT_LOCK, threads._LOCK, short_train._CORPUS_LOCK:
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists here
            ok = all(lock.acquire(timeout=5) for lock in (train_loop._INIT_LOCK, threads._LOCK,
                                                           short_train._CORPUS_LOCK))
            os._exit(0 if ok and threads.active() == 0 else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_thread_count_is_set_by_the_first_evaluation_and_restored_by_the_last() -> None:
    from flashsearch.proxies.quality.threads import active, torch_threads

    before = torch.get_num_threads()
    want = 2 if before != 2 else 3
    with torch_threads(want):
        assert torch.get_num_threads() == want and active() == 1
        with torch_threads(5):                  # a second evaluation in the same process: the count stays
            assert torch.get_num_threads() == want and active() == 2
        assert torch.get_num_threads() == want  # the first is still running
    assert torch.get_num_threads() == before and active() == 0
    with torch_threads(None):                   # None leaves the count alone
        assert torch.get_num_threads() == before


def test_threads_sharing_a_proxy_never_see_a_half_loaded_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.address=local runs evaluations as threads sharing one proxy: a second thread must not get the corpus
    before its validation windows exist (it failed its trial on `assert self._val is not None`)."""
    import threading
    import time

    from flashsearch.proxies.quality import short_train

    real = short_train.validation_windows

    def slow_windows(*args: object, **kwargs: object) -> torch.Tensor:
        time.sleep(0.5)                          # widen the window between loading the corpus and its windows
        return real(*args, **kwargs)

    monkeypatch.setattr(short_train, "validation_windows", slow_windows)
    proxy = small(corpus="pydoc")
    first = threading.Thread(target=proxy.corpus)
    first.start()
    time.sleep(0.2)
    proxy.corpus()
    assert proxy._val is not None
    first.join()


# ---- the config: one home for the defaults and the checks -------------------------------------------------------
def test_config_defaults_are_the_proxy_defaults_and_identity_is_every_setting() -> None:
    import dataclasses

    from flashsearch.proxies.quality.config import ShortTrainConfig

    default = ShortTrainConfig()
    assert ShortTrain().config == default and ShortTrain(default).config == default
    assert ShortTrain(lr=1e-3, seq_len=64).config == ShortTrainConfig(lr=1e-3, seq_len=64)
    assert (default.width_divisor, default.seq_len, default.batch_size, default.lr, default.threads) == \
        (16, 128, 4, 3e-3, 1)
    assert small(lr=1e-3).lr == 1e-3                       # settings read through the proxy too
    ident = ShortTrain().identity()
    assert set(ident) == {f.name for f in dataclasses.fields(ShortTrainConfig)}
    # The defaults that depend on other settings are resolved, so a changed default changes the identity.
    assert ident["weight_decay"] == 0.1 and ident["corpus"] == default.corpus_name is not None
    assert ShortTrain(weight_norm=True).identity()["weight_decay"] == 0.0
    assert ShortTrain(data_path="x.txt").identity()["corpus"] is None
    changed = {"width_divisor": 8, "head_dim": 32, "mamba2_d_state": 8, "mamba2_head_dim": 8,
               "swa_reference_context": None, "seq_len": 64, "batch_size": 8, "lr": 1e-3, "min_lr_ratio": 0.0,
               "warmup_fraction": 0.2, "decay_fraction": 0.5, "weight_decay": 0.0, "weight_norm": True,
               "grad_clip": None, "meta_tokens": 2, "eval_batches": 4, "log_every": 5, "seed": 7, "repeats": 2,
               "data_path": "x.txt", "text_field": "body", "corpus": "pydoc", "val_fraction": 0.2, "threads": None,
               "device": "cuda", "fast": False, "shards": "prepared/shards", "tokenizer": "bpe",
               "precision": "fp32", "compile": True, "warmup_steps": 5, "lr_width_base": 64}
    assert set(changed) == set(ident)                       # the list below covers every setting
    for key, value in changed.items():
        assert ShortTrain(**{key: value}).identity() != ident, key


@pytest.mark.parametrize("key, value", [
    ("width_divisor", 0), ("head_dim", 1.5), ("mamba2_d_state", 0), ("mamba2_head_dim", True),
    ("swa_reference_context", 0), ("seq_len", 1), ("batch_size", 2.5), ("lr", -1.0), ("lr", float("nan")),
    ("min_lr_ratio", 1.5), ("warmup_fraction", 1.5), ("decay_fraction", 0.0), ("weight_decay", -0.1),
    ("weight_norm", "yes"), ("grad_clip", 0.0), ("meta_tokens", -1), ("eval_batches", 0), ("log_every", 0),
    ("seed", 1.5), ("repeats", 0), ("data_path", 3), ("text_field", ""), ("corpus", "no_such_corpus"),
    ("val_fraction", 0.6), ("threads", 0), ("device", "tpu"), ("fast", "yes"), ("warmup_steps", 0),
    ("lr_width_base", 2.5),
])
def test_every_bad_setting_is_one_line_naming_the_key(key: str, value: object) -> None:
    from flashsearch.proxies.quality.config import ShortTrainConfig

    # A run's YAML names the corpus as data.corpus (the runner passes it on), so its error names that key.
    expected = r"^unknown corpus .*set data\.corpus to one of" if key == "corpus" else rf"^quality\.{key} must be "
    with pytest.raises(FlashsearchError, match=expected) as info:
        ShortTrain(**{key: value})
    assert "\n" not in str(info.value)
    with pytest.raises(FlashsearchError, match=expected):
        ShortTrainConfig(**{key: value})  # type: ignore[arg-type]


def test_unknown_settings_are_refused_from_python_and_from_yaml() -> None:
    from flashsearch.builders import QUALITY_PROXIES, instantiate

    with pytest.raises(FlashsearchError, match=r"option\(s\) lrr \(did you mean lr\?\); it takes: width_divisor"):
        ShortTrain(lrr=1e-3)
    with pytest.raises(FlashsearchError, match=r"does not take option\(s\) warmup_tokens"):
        instantiate({"_target_": "short_train", "warmup_tokens": 10}, QUALITY_PROXIES, "quality")
    built = instantiate({"_target_": "short_train", "lr": 1e-3, "seq_len": 64}, QUALITY_PROXIES, "quality", seed=3)
    assert built.config.lr == 1e-3 and built.config.seq_len == 64 and built.config.seed == 3
    from flashsearch.proxies.quality.config import ShortTrainConfig

    with pytest.raises(FlashsearchError, match="not both"):
        ShortTrain(ShortTrainConfig(), lr=1e-3)


def test_config_doubles_as_a_structured_schema() -> None:
    from omegaconf import OmegaConf

    from flashsearch.proxies.quality.config import ShortTrainConfig

    merged = OmegaConf.merge(OmegaConf.structured(ShortTrainConfig), {"lr": 0.01, "threads": None})
    assert OmegaConf.to_object(merged) == ShortTrainConfig(lr=0.01, threads=None)


# ---- schedules ----------------------------------------------------------------------------------------------------
def test_cosine_warms_up_linearly_then_decays_to_the_floor() -> None:
    from flashsearch.proxies.quality.schedules import WarmupCosine

    s = WarmupCosine(steps=13, warmup=3, min_ratio=0.1)
    assert [s(i) for i in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    after = [s(i) for i in range(3, 13)]                 # the cosine starts at the peak the warmup reached
    assert after[0] == 1.0 and all(a > b for a, b in itertools.pairwise(after)) and after[-1] > 0.1
    assert s(13) == pytest.approx(0.1)                   # the floor is where the cosine would be after the last step
    assert WarmupCosine(steps=1, warmup=1, min_ratio=0.1)(0) == 1.0


@pytest.mark.parametrize("steps, warmup, decay", [(37, 3, 7), (5, 1, 1), (2, 1, 1), (11, 4, 7)])
def test_warmup_stable_decay_shapes(steps: int, warmup: int, decay: int) -> None:
    from flashsearch.proxies.quality.schedules import WarmupStableDecay

    s = WarmupStableDecay(steps=steps, warmup=warmup, decay=decay, min_ratio=0.1)
    lrs = [s(i) for i in range(steps)]
    assert lrs[:warmup] == pytest.approx([(i + 1) / warmup for i in range(warmup)])
    assert all(v == 1.0 for v in lrs[warmup:s.stable_end])          # the peak held until the decay
    tail = lrs[s.stable_end:]
    assert len(tail) == decay and tail[-1] == pytest.approx(0.1)      # the last step is at the floor exactly
    steps_down = [a - b for a, b in itertools.pairwise([1.0, *tail])]
    assert steps_down == pytest.approx([0.9 / decay] * decay)         # linear


@pytest.mark.parametrize("tokens_per_step, rungs, warmup_fraction", [(128, (10, 30, 90), 0.1), (7, (5, 17, 41), 0.3),
                                                                     (12, (2, 3, 9), 0.5)])
def test_continuing_across_rungs_gives_the_schedule_of_one_run(tokens_per_step: int, rungs: tuple[int, ...],
                                                               warmup_fraction: float) -> None:
    """A staged run trains rung 0 up to its checkpoint, continues under rung 1 up to rung 1's, and so on: the LR it
    sees at every step must be the one of an uninterrupted run to the top rung."""
    from flashsearch.proxies.quality.schedules import schedule_for

    ladder = tuple(r * tokens_per_step + 3 for r in rungs)   # budgets not a whole number of steps
    scheds = [schedule_for(Budget(tokens=t, ladder=ladder), tokens_per_step, warmup_fraction, 0.2, 0.1)
              for t in ladder]
    assert [rung for _, rung in scheds] == [0, 1, 2]
    top = scheds[-1][0]
    staged, start = [], 0
    for s, _ in scheds:
        end = s.stable_end if s is not top else top.steps
        staged += [s(i) for i in range(start, end)]
        start = end
    assert staged == [top(i) for i in range(top.steps)]
    assert all(a.stable_end < b.stable_end for (a, _), (b, _) in itertools.pairwise(scheds))
    one, rung = schedule_for(Budget(tokens=ladder[-1]), tokens_per_step, warmup_fraction, 0.2, 0.1)
    assert rung is None and type(one).__name__ == "WarmupCosine"
    with pytest.raises(FlashsearchError, match="is not a rung"):
        schedule_for(Budget(tokens=ladder[-1] + 1, ladder=ladder), tokens_per_step, warmup_fraction, 0.2, 0.1)


def test_a_ladder_warms_up_like_one_run_of_its_top_rung_within_rung_0() -> None:
    from flashsearch.proxies.quality.schedules import schedule_for

    ladder = (30 * 8, 90 * 8)
    single = schedule_for(Budget(tokens=ladder[-1]), 8, 0.1, 0.2, 0.1)[0]
    rungs = [schedule_for(Budget(tokens=t, ladder=ladder), 8, 0.1, 0.2, 0.1)[0] for t in ladder]
    assert single.warmup == 9 and {s.warmup for s in rungs} == {single.warmup}
    # eta 3, three rungs (the shipped ladder): the top run's 27 warmup steps do not fit rung 0 with its 6-step decay
    shipped = (30 * 8, 90 * 8, 270 * 8)
    assert {schedule_for(Budget(tokens=t, ladder=shipped), 8, 0.1, 0.2, 0.1)[0].warmup for t in shipped} == {24}


def test_warmup_steps_replace_the_share_and_stay_inside_rung_0() -> None:
    from flashsearch.proxies.quality.schedules import schedule_for

    one, _ = schedule_for(Budget(tokens=100 * 8), 8, 0.1, 0.2, 0.1, warmup_steps=25)
    assert one.warmup == 25 and schedule_for(Budget(tokens=100 * 8), 8, 0.1, 0.2, 0.1)[0].warmup == 10
    ladder = (10 * 8, 30 * 8, 90 * 8)
    rungs = [schedule_for(Budget(tokens=t, ladder=ladder), 8, 0.1, 0.2, 0.1, warmup_steps=9)[0] for t in ladder]
    assert {s.warmup for s in rungs} == {8}        # capped: rung 0 (10 steps) keeps its 2-step decay
    assert rungs[0].stable_end == 8


def test_width_scaled_learning_rate_moves_the_hidden_matrices_only() -> None:
    from flashsearch.proxies.quality.train_loop import build_model, optimizer

    proxy = small(lr_width_base=32)
    model, _ = build_model(proxy.config, proxy.proxy_genome(HYBRID), 0)      # proxy width 64
    scales = {id(p): g["lr_scale"] for g in optimizer(proxy.config, model).param_groups for p in g["params"]}
    assert scales[id(model.embed.weight)] == 1.0
    assert scales[id(model.layers[0].norm.weight)] == 1.0
    hidden = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed.")]
    assert hidden and {scales[id(p)] for p in hidden} == {0.5}
    # at its own width the scaled rule is the plain one, bit for bit; at another it trains differently
    budget = Budget(tokens=6 * 64 * 8)
    plain = small().evaluate(HYBRID, budget)
    assert small(lr_width_base=64).evaluate(HYBRID, budget).loss == plain.loss
    assert small(lr_width_base=32).evaluate(HYBRID, budget).loss != plain.loss


# ---- per-operator proxy rules ---------------------------------------------------------------------------------------
class HalfRank(Operator):
    """A user's operator with its own proxy rule: its `rank` option follows the proxy's width."""

    name = "proxy_rule_toy"
    letter = "PRT"
    role = "mixer"

    @dataclass(frozen=True)
    class Options:
        rank: int = option(256, ge=1)

    @classmethod
    def proxy_options(cls, options: Options, scale: ProxyScale) -> dict[str, int]:
        return {"rank": max(1, scale.d_model // 2)}

    def __init__(self, genome: Genome):
        super().__init__(genome)
        self.down = nn.Linear(genome.d_model, self.opts.rank, bias=False)
        self.up = nn.Linear(self.opts.rank, genome.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # [B, T, D] -> [B, T, D]
        return self.up(torch.tanh(self.down(x)))


def test_a_user_operators_proxy_rule_is_honoured() -> None:
    g = Genome(layer_types=("proxy_rule_toy", "ffn"), d_model=2048, n_heads=16, n_kv_heads=4, head_dim=128,
               op_options={"proxy_rule_toy": {"rank": 512}})
    pg = small().proxy_genome(g)
    assert pg.d_model == 128 and pg.options("proxy_rule_toy")["rank"] == 64
    assert g.options("proxy_rule_toy")["rank"] == 512                        # the genome itself is untouched
    r = small().evaluate(g, Budget(tokens=2 * 64 * 8))                        # and the proxy trains with it
    assert r.proxy_params == sum(p.numel() for p in HybridLM(small(fast=False).proxy_genome(g)).parameters())


def test_builtin_operators_declare_their_proxy_rules() -> None:
    from flashsearch import operators

    scale = ProxyScale(d_model=64, head_dim=16, seq_len=128, reference_context=2048, state_size=8, state_head_dim=4)
    rules = {s.name: dict(s.cls.proxy_options(s.parse_options({"window": 1024} if s.name == "swa" else {}), scale))
             for s in operators.specs() if s.cls.__module__.startswith("flashsearch.")}
    assert rules.pop("mamba2") == {"d_state": 8, "head_dim": 4}
    assert rules.pop("swa") == {"window": 64}                                # 1024 of 2048 -> 64 of 128
    assert rules and all(r == {} for r in rules.values())                      # the others keep their options
    no_reference = dataclasses.replace(scale, reference_context=None)
    assert SlidingWindowAttention.proxy_options(SlidingWindowAttention.Options(window=1024), no_reference) == {}
