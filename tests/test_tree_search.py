import numpy as np
import pytest

from hydra_runtime import TREE_PRESETS, TreeBuffers
from hydra_runtime.tree_search import grow_tree


def expected_tokens_per_step(choices, rank_probs) -> float:
    """1 + sum over nodes of the product of rank_probs along the node's path (grow_tree's model)."""
    total = 1.0
    for path in choices:
        total += float(np.prod([rank_probs[depth, rank] for depth, rank in enumerate(path)]))
    return total


def test_confident_heads_grow_a_chain():
    rank_probs = np.array([[0.9, 0.05, 0.01]] * 4)
    choices, expected = grow_tree(rank_probs, num_nodes=5)
    assert choices == ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0))
    assert expected == pytest.approx(1 + 0.9 + 0.81 + 0.729 + 0.6561)


def test_uncertain_first_head_grows_wide():
    rank_probs = np.array([[0.3, 0.25, 0.2, 0.1], [0.2, 0.1, 0.05, 0.01]])
    choices, expected = grow_tree(rank_probs, num_nodes=5)
    # Written out: 0.3, 0.25, 0.2, 0.1 (rank 3) beat any depth-2 node (best 0.3 * 0.2 = 0.06).
    assert choices == ((0,), (1,), (2,), (3,))
    assert expected == pytest.approx(1.85)


def test_grown_trees_are_valid_and_never_worse_than_presets_of_their_size():
    rng = np.random.default_rng(0)
    rank_probs = np.sort(rng.dirichlet(np.ones(10), size=4), axis=1)[:, ::-1] * 0.8
    for name in ("chain4", "tree8", "tree16", "tree24"):
        preset = TREE_PRESETS[name]
        choices, expected = grow_tree(rank_probs, len(preset) + 1)
        TreeBuffers.from_choices(choices, num_heads=4)  # valid: every parent present
        assert expected == pytest.approx(expected_tokens_per_step(choices, rank_probs))
        assert expected >= expected_tokens_per_step(preset, rank_probs) - 1e-12
