"""Short-training quality proxy on tiny budgets: learning, determinism, failures, configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.proxies.base import Budget, QualityProxy
from flashsearch.proxies.quality.short_train import ShortTrain

HYBRID = Genome(layer_types=("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn"), d_model=1024, n_heads=8,
                n_kv_heads=2, head_dim=128, op_options={"swa": {"window": 512}})


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
    assert proxy.weight_decay == 0.0
    before = torch.get_num_threads()
    r = proxy.evaluate(Genome(layer_types=("swa", "ffn"), d_model=512, n_heads=4, n_kv_heads=4, head_dim=128),
                       Budget(tokens=20 * 64 * 8))
    assert torch.get_num_threads() == before
    assert r.extra["data"] == str(text)
    assert r.curve[-1][1] < r.curve[0][1] - 0.5 and r.loss < 7.0


@pytest.mark.parametrize("kwargs, match", [
    ({"width_divisor": 0}, "width_divisor"),
    ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"seq_len": 1}, "seq_len"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"weight_norm": "yes"}, "weight_norm"),
    ({"warmup_fraction": 1.5}, "warmup_fraction"),
    ({"meta_tokens": -1}, "meta_tokens"),
    ({"threads": 0}, "threads"),
    ({"repeats": 0}, "repeats"),
    ({"device": "tpu"}, "device"),
])
def test_bad_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(FlashsearchError, match=match):
        ShortTrain(**kwargs)  # type: ignore[arg-type]


def test_bad_budget_and_data(tmp_path: Path) -> None:
    with pytest.raises(FlashsearchError, match="less than one step"):
        small().evaluate(HYBRID, Budget(tokens=10))
    with pytest.raises(FlashsearchError, match="does not exist"):
        small(data_path=str(tmp_path / "nope.jsonl")).evaluate(HYBRID, Budget(tokens=64 * 8))


def test_a_forked_child_does_not_inherit_a_held_init_lock() -> None:
    """The studies' job pool forks; a thread-backend evaluation may hold the init lock at that moment. The child
    must get a free lock (else its first training waits forever, as a hung job pool once did)."""
    import os

    from flashsearch.proxies.quality import short_train

    with short_train._INIT_LOCK:
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists here
            ok = short_train._INIT_LOCK.acquire(timeout=5) and short_train._THREADS_LOCK.acquire(timeout=5)
            os._exit(0 if ok and short_train._threads_state["active"] == 0 else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


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
