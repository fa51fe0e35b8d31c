"""N-gram baselines: how far a count model of the training text gets, scored in bits per byte.

A proxy that ends near these numbers has learned symbol statistics, not language: the fidelity study prints them
next to the proxy's losses on the same validation text, over bytes (what a byte-level proxy must beat) and over
the proxy's own tokens (what a subword proxy gets from its vocabulary alone). The model is interpolated absolute
discounting (the backbone of Kneser-Ney without its continuation counts), order 1 (unigram) to 3 (trigram):

    p_n(s | ctx) = max(c(ctx s) - D, 0) / c(ctx) + D * u(ctx) / c(ctx) * p_{n-1}(s | shorter ctx)

with u(ctx) the number of distinct symbols seen after ctx and D = 0.75; an unseen context falls back to the
shorter one, and the unigram interpolates with uniform over the alphabet so no symbol has probability zero.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DISCOUNT = 0.75
ORDERS = {"unigram": 1, "bigram": 2, "trigram": 3}


def _keys(data: np.ndarray, n: int, base: int) -> np.ndarray:
    """[len - n + 1] int64: each n-gram of `data` as one integer in base `base`, the first symbol most
    significant."""
    key = np.zeros(len(data) - n + 1, dtype=np.int64)
    for i in range(n):
        key = key * base + data[i:len(data) - n + 1 + i].astype(np.int64)
    return key


class Ngram:
    """Counts of every n-gram up to `order` of a training sequence of symbols in range(alphabet)."""

    def __init__(self, train: bytes | np.ndarray, order: int = 3, alphabet: int = 256):
        data = np.frombuffer(train, dtype=np.uint8) if isinstance(train, (bytes, bytearray)) else np.asarray(train)
        if order < 1 or alphabet ** order >= 2 ** 63:
            raise ValueError(f"an order-{order} model over {alphabet} symbols does not fit int64 keys")
        self.order, self.alphabet = order, alphabet
        self.counts: list[dict[int, int]] = [{}]           # counts[n][key of an n-gram]
        self.context: list[dict[int, tuple[int, int]]] = [{}]   # context[n][key of n-1 bytes] = (total, distinct)
        for n in range(1, order + 1):
            keys, counts = np.unique(_keys(data, n, alphabet), return_counts=True)
            self.counts.append(dict(zip(keys.tolist(), counts.tolist())))
            ctx, inverse = np.unique(keys // alphabet, return_inverse=True)
            total = np.bincount(inverse, weights=counts).astype(np.int64)
            distinct = np.bincount(inverse).astype(np.int64)
            self.context.append(dict(zip(ctx.tolist(), zip(total.tolist(), distinct.tolist()))))

    def prob(self, history: Sequence[int], symbol: int, order: int) -> float:
        """p(symbol | the last order-1 symbols of history) under the interpolated model of that order."""
        p = 1.0 / self.alphabet
        for n in range(1, order + 1):
            if len(history) < n - 1:
                break
            ctx = 0
            for b in history[len(history) - (n - 1):] if n > 1 else ():
                ctx = ctx * self.alphabet + int(b)
            seen = self.context[n].get(ctx)
            if seen is None:        # an unseen context: keep the shorter context's estimate
                continue
            total, distinct = seen
            c = self.counts[n].get(ctx * self.alphabet + symbol, 0)
            p = max(c - DISCOUNT, 0.0) / total + DISCOUNT * distinct / total * p
        return p

    def bits_per_byte(self, texts: Sequence[Sequence[int]], order: int, skip: Sequence[int] | None = None,
                      n_bytes: int | None = None) -> float:
        """Bits per byte over `texts` (sequences of symbols), each symbol predicted from those before it in its
        own text; the first skip[i] symbols of text i are context only (the part a language model is given, not
        asked to predict). n_bytes: the bytes of text the predicted symbols spell (default: one per symbol)."""
        bits, count = 0.0, 0
        for i, text in enumerate(texts):
            start = 0 if skip is None else int(skip[i])
            for j in range(start, len(text)):
                bits -= math.log2(self.prob(text[max(0, j - order + 1):j], int(text[j]), order))
                count += 1
        return bits / max(n_bytes if n_bytes is not None else count, 1)


__all__ = ["Ngram", "ORDERS", "DISCOUNT"]
