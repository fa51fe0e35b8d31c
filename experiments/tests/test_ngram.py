"""The byte n-gram baselines of the fidelity study: proper distributions, the orders in the right order, and the
first bytes of a window treated as context."""

from __future__ import annotations

import math
import random

import pytest

from experiments.lib.ngram import Ngram


@pytest.fixture(scope="module")
def text() -> bytes:
    rng = random.Random(0)
    words = [b"the", b"cat", b"sat", b"on", b"a", b"mat", b"and", b"dog", b"ran"]
    return b" ".join(rng.choice(words) for _ in range(3000))


@pytest.mark.parametrize("history", [b"", b"t", b"th", b"zq", b" c", b"\xff\x00"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_context_gives_a_distribution_over_the_256_bytes(text: bytes, history: bytes, order: int) -> None:
    model = Ngram(text, order=3)
    probs = [model.prob(history, b, order) for b in range(256)]
    assert min(probs) > 0                                   # nothing is impossible, unseen bytes included
    assert sum(probs) == pytest.approx(1.0, abs=1e-9)


def test_unigram_is_the_byte_frequency_up_to_the_discount(text: bytes) -> None:
    model = Ngram(text, order=1)
    n, distinct = len(text), len(set(text))
    c = text.count(b"t")
    assert model.prob(b"", ord("t"), 1) == pytest.approx((c - 0.75) / n + 0.75 * distinct / n / 256)


def test_longer_contexts_predict_structured_text_better(text: bytes) -> None:
    model = Ngram(text, order=3)
    held_out = [text[:400], text[1000:1500]]
    bpb = [model.bits_per_byte(held_out, order) for order in (1, 2, 3)]
    assert bpb[0] > bpb[1] > bpb[2] > 0
    assert bpb[0] < 8                                       # better than uniform bytes


def test_skipped_bytes_are_context_not_targets(text: bytes) -> None:
    model = Ngram(text, order=3)
    window = text[:50]
    full = model.bits_per_byte([window], 3)
    tail = model.bits_per_byte([window], 3, skip=[5])
    by_hand = -sum(math.log2(model.prob(window[max(0, j - 2):j], window[j], 3)) for j in range(5, 50)) / 45
    assert tail == pytest.approx(by_hand) and tail != pytest.approx(full)
