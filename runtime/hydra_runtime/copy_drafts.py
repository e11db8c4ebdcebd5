"""Copy drafts: the tokens the copy chain proposes, found in the token history (prompt lookup).

Answers repeat their prompt and themselves (names, code, lists, quoted text). Where the last
tokens of the history occurred before (the longest such suffix, up to 8 tokens), the tokens
that followed its latest earlier occurrence are a good guess for what comes next. Training-free,
and lossless: the chain is verified like any drafted node, so a wrong guess is only rejected.
When the occurrence is so recent that the history ends before the chain is full, the
repetition is continued with its own period (a run of "= = = =" proposes more "=").

A verified row is not free (on a 2-core CPU each costs ~5-7% of a one-token step), so
``CopyDrafts`` sends only as much of the proposal as its evidence has earned: two chain nodes
per token of agreement between the history's end and the text before the matched occurrence.
A lone 1-token match earns 2 nodes; text being copied verbatim soon earns the whole chain.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# The longest suffix looked up. A longer match picks the occurrence whose context agrees most: on the
# ShareGPT tuning prompts 8 simulates 0.7% more accepted tokens than 3 at the same rows (BENCHMARKS.md N).
MAX_NGRAM = 8
# Chain nodes sent per token of agreement behind the match. Chosen with the decode simulator on the
# ShareGPT tuning prompts for a row costing 4.5-9% of a one-token step (BENCHMARKS.md section D);
# a table by match length did no better.
NODES_PER_AGREED_TOKEN = 2


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
        self.match_end = -1  # end position of the occurrence the last proposal followed (-1: none)
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
                self.match_end = end
                proposal = history[end + 1 : end + 1 + self.length]
                period = last - end  # the history repeats itself with this period, if the guess is right
                while len(proposal) < self.length:
                    proposal.append(proposal[len(proposal) - period])
                return np.asarray(proposal, dtype=np.int64)
        self.match_end = -1
        return np.zeros(0, dtype=np.int64)

    def _index_until(self, stop: int) -> None:
        history, latest = self.history, self._latest_end
        for end in range(self._indexed, stop):
            for n in range(1, min(MAX_NGRAM, end + 1) + 1):
                latest[tuple(history[end - n + 1 : end + 1])] = end
        self._indexed = max(self._indexed, stop)


class CopyDrafts:
    """The copy chain of each step: prompt lookup's proposal, cut to the length its match earned.

    ``chain_nodes`` (C) is the tree's chain; a step sends ``nodes_per_agreed_token`` nodes per
    token on which the history's end and the text before the matched occurrence agree
    (counted back from both ends), at most C (``nodes_per_agreed_token >= C``: the whole
    proposal whenever there is a match).
    """

    def __init__(self, chain_nodes: int, history: Iterable[int] = (),
                 nodes_per_agreed_token: int = NODES_PER_AGREED_TOKEN):
        self.chain_nodes = chain_nodes
        self.nodes_per_agreed_token = nodes_per_agreed_token
        self.lookup = PromptLookup(chain_nodes, history)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append accepted tokens (the accepted drafts, then the next root)."""
        self.lookup.extend(tokens)

    def propose(self) -> np.ndarray:
        """[c] int64, 0 <= c <= C: the chain to verify next."""
        proposal = self.lookup.propose()
        return proposal[: min(self.chain_nodes, self.nodes_per_agreed_token * self._agreement())]

    def _agreement(self) -> int:
        """Tokens the history's end and the matched occurrence's end agree on, counted backwards
        (0 without a match), up to what the whole chain needs."""
        history, end = self.lookup.history, self.lookup.match_end
        last = len(history) - 1
        needed = -(-self.chain_nodes // self.nodes_per_agreed_token)
        agreed = 0
        while end >= 0 and agreed < needed and agreed <= end and history[end - agreed] == history[last - agreed]:
            agreed += 1
        return agreed
