"""The classic baseline of a character language model: an n-gram model with interpolated Kneser-Ney smoothing.

A text is the symbols BOS, its characters (UNK for one outside the model's characters), EOS, scored like the
LSTM: every character and the EOS, each given the ones before it (the history is padded with BOS). Lower orders
count continuations (how many different symbols precede an n-gram), each order has its own absolute discount
D = n1 / (n1 + 2 n2) from its counts of counts, and order 0 is uniform over the symbols that can follow.
"""

from __future__ import annotations

import collections
import math

BOS, EOS, UNK = "\x02", "\x03", "\x01"  # never in a cleaned text (training.textgen.clean drops controls)


def symbols(text: str, chars: list[str]) -> str:
    """The text as one string of symbols, without the BOS: characters outside `chars` become UNK, EOS at the end."""
    known = set(chars)
    return "".join(c if c in known else UNK for c in text) + EOS


class KneserNey:
    """An interpolated Kneser-Ney model of `order` over texts given as `symbols` strings."""

    def __init__(self, order: int, texts: list[str]):
        self.order = order
        padded = [BOS * (order - 1) + t for t in texts]
        grams = collections.Counter(p[i - order:i] for p in padded for i in range(order, len(p) + 1))
        self.counts = {order: grams}  # k -> {k-gram: count (raw at the top order, continuations below)}
        for k in range(order - 1, 0, -1):
            self.counts[k] = collections.Counter(g[1:] for g in self.counts[k + 1])
        self.totals, self.types, self.discount = {}, {}, {}
        for k, grams_k in self.counts.items():
            totals, types = collections.Counter(), collections.Counter()
            for gram, n in grams_k.items():
                totals[gram[:-1]] += n
                types[gram[:-1]] += 1
            self.totals[k], self.types[k] = totals, types
            by_count = collections.Counter(n for n in grams_k.values() if n <= 2)
            n1, n2 = by_count[1], by_count[2]
            self.discount[k] = n1 / (n1 + 2 * n2) if n1 else 0.5
        self.vocabulary = len(self.counts[1])  # symbols seen as predictions (characters, UNK, EOS)

    def probability(self, history: str, symbol: str) -> float:
        """P(symbol | the last order-1 symbols of history)."""
        p = 1.0 / self.vocabulary
        for k in range(1, self.order + 1):
            h = history[len(history) - (k - 1):] if k > 1 else ""
            total = self.totals[k].get(h)
            if not total:
                continue  # an unseen history: the lower order's estimate stands
            d = self.discount[k]
            p = (max(self.counts[k].get(h + symbol, 0) - d, 0.0) + d * self.types[k][h] * p) / total
        return p

    def bits_per_char(self, texts: list[str]) -> float:
        """Mean -log2 P over every symbol of `texts` (`symbols` strings)."""
        bits, count = 0.0, 0
        for text in texts:
            padded = BOS * (self.order - 1) + text
            for i in range(self.order - 1, len(padded)):
                bits -= math.log2(self.probability(padded[i - self.order + 1:i], padded[i]))
            count += len(text)
        return bits / count
