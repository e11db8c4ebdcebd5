"""Prompt lookup (the copy chain's drafts) against a brute-force search of the history."""

import random

import numpy as np

from hydra_runtime.copy_drafts import MAX_NGRAM, PromptLookup


def brute_force(history: list[int], length: int) -> list[int]:
    """Latest earlier occurrence of the last 3, 2, then 1 tokens; what followed, continued periodically."""
    last = len(history) - 1
    for n in range(min(MAX_NGRAM, len(history)), 0, -1):
        suffix = history[last - n + 1 :]
        for end in range(last - 1, n - 2, -1):
            if history[end - n + 1 : end + 1] == suffix:
                extended = list(history)
                while len(extended) < last + 1 + length:
                    extended.append(extended[len(extended) - (last - end)])
                return extended[end + 1 : end + 1 + length]
    return []


def test_matches_a_brute_force_search_as_the_history_grows():
    rng = random.Random(0)
    for trial in range(20):
        vocab = rng.choice([3, 8, 40])
        history = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        lookup = PromptLookup(5, history)
        for _ in range(40):
            assert lookup.propose().tolist() == brute_force(history, 5), (trial, history)
            fresh = [rng.randrange(vocab) for _ in range(rng.randrange(1, 4))]
            history += fresh
            lookup.extend(fresh)


def test_the_longest_suffix_wins_and_the_latest_occurrence_of_it():
    lookup = PromptLookup(2, [1, 2, 3, 9, 2, 3, 8, 5, 2, 3])
    assert lookup.propose().tolist() == [8, 5]  # "2 3" last occurred before "8 5"
    lookup = PromptLookup(2, [9, 2, 3, 4, 1, 2, 3, 7, 9, 2, 3])
    assert lookup.propose().tolist() == [4, 1]  # "9 2 3" beats the later "2 3"


def test_nothing_is_proposed_for_a_new_token_and_runs_continue():
    assert PromptLookup(4, [1, 2, 3]).propose().dtype == np.int64
    assert PromptLookup(4, [1, 2, 3]).propose().tolist() == []
    assert PromptLookup(4, [5, 5]).propose().tolist() == [5, 5, 5, 5]  # a run goes on
