"""Copy drafts: the tokens the copy chain proposes, found in the token history (prompt lookup).

Answers repeat their prompt and themselves (names, code, lists, quoted text). Where the last
3 tokens of the history (else the last 2, else the last 1) occurred before, the tokens that
followed their latest earlier occurrence are a good guess for what comes next. Training-free,
and lossless: the chain is verified like any drafted node, so a wrong guess is only rejected.
When the occurrence is so recent that the history ends before the chain is full, the
repetition is continued with its own period (a run of "= = = =" proposes more "=").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MAX_NGRAM = 3


class PromptLookup:
    """Proposes up to ``length`` tokens to follow the history, updated as tokens are appended.

    Keeps, for every n-gram (n = 1..MAX_NGRAM) of the history, the position where its latest
    occurrence ends, so a proposal costs O(MAX_NGRAM) dictionary lookups however long the history.
    """

    def __init__(self, length: int, history: Iterable[int] = ()):
        self.length = length
        self.history: list[int] = []
        self._latest_end: dict[tuple[int, ...], int] = {}  # n-gram -> end position of its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in _latest_end
        self.extend(history)

    def extend(self, tokens: Iterable[int]) -> None:
        self.history.extend(int(token) for token in tokens)

    def propose(self) -> np.ndarray:
        """[length] int64: what followed the latest earlier occurrence of the longest matching
        suffix; empty when the last token never occurred before."""
        history = self.history
        last = len(history) - 1
        self._index_until(last)  # the suffix itself (ending at ``last``) must not match itself
        for n in range(min(MAX_NGRAM, len(history)), 0, -1):
            end = self._latest_end.get(tuple(history[last - n + 1 :]))
            if end is not None:
                proposal = history[end + 1 : end + 1 + self.length]
                period = last - end  # the history repeats itself with this period, if the guess is right
                while len(proposal) < self.length:
                    proposal.append(proposal[len(proposal) - period])
                return np.asarray(proposal, dtype=np.int64)
        return np.zeros(0, dtype=np.int64)

    def _index_until(self, stop: int) -> None:
        history, latest = self.history, self._latest_end
        for end in range(self._indexed, stop):
            for n in range(1, min(MAX_NGRAM, end + 1) + 1):
                latest[tuple(history[end - n + 1 : end + 1])] = end
        self._indexed = max(self._indexed, stop)
