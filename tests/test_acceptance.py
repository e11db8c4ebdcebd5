import numpy as np

from hydra_runtime import TreeBuffers
from hydra_runtime.acceptance import greedy_node_ok, longest_accepted_path, typical_node_ok, typical_thresholds


def test_greedy_picks_longest_agreeing_path():
    tree = TreeBuffers.from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
    tokens = np.array([10, 11, 12, 13, 14, 15, 16])
    # Base argmax after each node: root->12 (node 2), node 2->15 (node 5), node 5->99.
    predictions = np.array([12, 0, 15, 0, 0, 99, 0])
    ok = greedy_node_ok(tokens, predictions, tree.parents)
    np.testing.assert_array_equal(longest_accepted_path(tree.retrieve_paths, ok), [0, 2, 5])


def test_nothing_accepted_keeps_root():
    tree = TreeBuffers.from_name("tree8")
    ok = np.zeros(tree.num_nodes, dtype=bool)
    np.testing.assert_array_equal(longest_accepted_path(tree.retrieve_paths, ok), [0])


def test_truncated_tree_ignores_absent_nodes():
    tree = TreeBuffers.from_name("chain4")
    ok = np.ones(3, dtype=bool)  # only nodes 0..2 were verified
    np.testing.assert_array_equal(longest_accepted_path(tree.retrieve_paths, ok), [0, 1, 2])


def test_typical_threshold_accepts_confident_candidates():
    tree = TreeBuffers.from_name("chain4")
    probs = np.full((5, 4), 0.01)
    probs[:, 0] = 0.97  # a confident distribution: low entropy, threshold = epsilon
    thresholds = typical_thresholds(probs, posterior_threshold=0.09, posterior_alpha=0.3)
    np.testing.assert_allclose(thresholds, 0.09)
    candidate = np.array([1.0, 0.5, 0.5, 0.05, 0.5])  # node 3 falls under the threshold
    ok = typical_node_ok(np.zeros(5, dtype=int), candidate, thresholds, tree.parents)
    np.testing.assert_array_equal(longest_accepted_path(tree.retrieve_paths, ok), [0, 1, 2])
