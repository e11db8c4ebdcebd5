"""Prompt lookup (the copy chain's drafts) against a brute-force search of the history, and the
chain length CopyDrafts sends for each match."""

import random

import numpy as np

from hydra_runtime.copy_drafts import MAX_NGRAM, NODES_PER_AGREED_TOKEN, CopyDrafts, PromptLookup


def brute_force(history: list[int], length: int) -> list[int]:
    """Latest earlier occurrence of the last MAX_NGRAM, ..., 2, then 1 tokens; what followed, continued
    periodically."""
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
    before = [5, 6, 7, 8, 9, 2, 3]
    lookup = PromptLookup(2, [*before, 4, 1, 7, 9, 2, 3, 8, 0, *before])
    assert lookup.propose().tolist() == [4, 1]  # 7 agreeing tokens beat the later "7 9 2 3"


def test_nothing_is_proposed_for_a_new_token_and_runs_continue():
    assert PromptLookup(4, [1, 2, 3]).propose().dtype == np.int64
    assert PromptLookup(4, [1, 2, 3]).propose().tolist() == []
    assert PromptLookup(4, [5, 5]).propose().tolist() == [5, 5, 5, 5]  # a run goes on


def test_the_chain_is_as_long_as_its_match_earned():
    text = list(range(100, 120))
    per_token = NODES_PER_AGREED_TOKEN
    assert CopyDrafts(16, text + [7, 103]).propose().tolist() == text[4 : 4 + per_token]  # 1 token agrees
    assert CopyDrafts(16, text + [7, 102, 103]).propose().tolist() == text[4 : 4 + 2 * per_token]
    assert CopyDrafts(16, text + [7, 101, 102, 103]).propose().tolist() == text[4 : 4 + 3 * per_token]
    # The agreement runs past the 3 tokens the lookup matched on.
    assert CopyDrafts(16, text + text[:6]).propose().tolist() == text[6 : 6 + 6 * per_token]
    assert CopyDrafts(16, text + text[:9]).propose().tolist() == (text + text)[9 : 9 + 16]  # the whole chain
    assert CopyDrafts(4, text + [7, 101, 102, 103]).propose().tolist() == text[4:8]  # capped by the tree's chain
    assert CopyDrafts(16, text + [7]).propose().tolist() == []  # no match: no rows at all


def test_the_chain_grows_while_the_text_is_being_copied():
    text = list(range(100, 160))
    drafts = CopyDrafts(16, text + [text[0]])
    lengths = []
    for start in range(1, 20, 3):  # the copy goes on, 3 accepted tokens per step
        lengths.append(len(drafts.propose()))
        drafts.extend(text[start : start + 3])
    assert lengths == [2, 8, 14, 16, 16, 16, 16]  # 1, 4, 7, 10, ... tokens agree
