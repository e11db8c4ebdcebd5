import numpy as np

from hydra_runtime import TreeBuffers
import pytest
import torch

from hydra_runtime.acceptance import (
    greedy_node_ok,
    longest_accepted_path,
    longest_accepted_rows,
    parent_rows,
    residual_probs,
    speculative_sampling_ok,
)
from hydra_runtime.sampling import inverse_cdf


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


# A tree whose root has children A, B and whose A has children C, D, each row with its own
# next-token distribution (rows: root, A, B, C, D); vocabulary of 5.
TREE = TreeBuffers.from_choices([[0], [1], [0, 0], [0, 1]])
A, B, C, D = 1, 3, 1, 4
TOKENS = np.array([0, A, B, C, D])
NEXT = np.array([[0.10, 0.40, 0.05, 0.30, 0.15],   # after the root's position
                 [0.30, 0.10, 0.20, 0.10, 0.30],   # after A
                 [0.05, 0.05, 0.50, 0.20, 0.20],   # after B
                 [0.20, 0.20, 0.20, 0.20, 0.20],   # after C
                 [0.20, 0.20, 0.20, 0.20, 0.20]])  # after D
OTHER = np.array([0.5, 0.1, 0.1, 0.1, 0.2])  # after a token the tree did not draft


def _one_step(tokens, rng):
    """One sampled verification of TREE with TOKENS -> the emitted tokens (path then the sampled one)."""
    nodes = np.arange(TREE.num_verified)
    parents = parent_rows(TREE, nodes)
    uniforms = rng.random(len(nodes))
    ok = speculative_sampling_ok(tokens, NEXT[parents, tokens], parents, uniforms)
    rows = longest_accepted_rows(TREE, nodes, ok)
    last = rows[-1]
    return [*tokens[rows[1:]], inverse_cdf(residual_probs(NEXT[last], tokens, parents, last), uniforms[0])]


@pytest.mark.parametrize("tokens", [TOKENS, np.array([0, A, A, C, D])], ids=["distinct", "a repeated sibling"])
def test_speculative_sampling_emits_the_base_models_distribution(tokens):
    """The first two tokens of a step (completed by a plain draw where the step emitted one) are
    distributed as sampling the base model twice: P(t1) P(t2 | t1)."""
    rng = np.random.default_rng(0)
    after = {A: NEXT[1], B: NEXT[2]} if tokens[2] == B else {A: NEXT[1]}
    counts = np.zeros((5, 5))
    samples = 30_000
    for _ in range(samples):
        emitted = _one_step(tokens, rng)
        if len(emitted) == 1:
            emitted.append(inverse_cdf(after.get(emitted[0], OTHER), rng.random()))
        counts[emitted[0], emitted[1]] += 1
    expected = NEXT[0][:, None] * np.array([after.get(t, OTHER) for t in range(5)])
    np.testing.assert_allclose(counts / samples, expected, atol=0.01)  # ~5 standard errors


def test_speculative_sampling_takes_at_most_one_child_and_needs_probability():
    parents = parent_rows(TREE, np.arange(5))
    ok = speculative_sampling_ok(TOKENS, np.array([1.0, 0.4, 0.3, 0.1, 0.3]), parents, np.zeros(5))
    np.testing.assert_array_equal(ok, [True, True, False, True, False])  # u = 0: the first child of each parent
    ok = speculative_sampling_ok(TOKENS, np.array([1.0, 0.0, 0.3, 0.0, 0.0]), parents, np.zeros(5))
    np.testing.assert_array_equal(ok, [True, False, True, False, False])  # no probability: never taken


def test_residual_removes_the_last_rows_children_only_when_verifying():
    parents = parent_rows(TREE, np.arange(5))
    np.testing.assert_allclose(residual_probs(NEXT[1], TOKENS, parents, last=1), [0.3, 0.0, 0.2, 0.1, 0.0])
    np.testing.assert_allclose(residual_probs(NEXT[0], TOKENS, parents, last=0), [0.1, 0.0, 0.05, 0.0, 0.15])
    np.testing.assert_allclose(residual_probs(NEXT[0], TOKENS, parents, last=0, verifying=False), NEXT[0])


def test_the_engine_graphs_rule_is_the_runtimes():
    """graphs.speculative_sampling_ok / without_tokens (traced into the engine) against the numpy rule
    on random rows with repeated tokens, including float32 vs float64 on the probabilities."""
    from hydra_export.export.graphs import speculative_sampling_ok as graph_ok
    from hydra_export.export.graphs import without_tokens

    tree = TreeBuffers.from_name("tree16", copy_nodes=4)
    nodes = np.arange(tree.num_verified)
    parents = parent_rows(tree, nodes)
    rng = np.random.default_rng(1)
    for _ in range(200):
        scaled = rng.normal(size=(len(nodes), 6)) * 2
        tokens = rng.integers(0, 6, len(nodes))
        uniforms = rng.random(len(nodes)).astype(np.float32)
        probs = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
        expected = speculative_sampling_ok(tokens, probs[parents, tokens], parents, uniforms.astype(np.float64))
        got = graph_ok(torch.softmax(torch.tensor(scaled, dtype=torch.float32), dim=-1), torch.tensor(tokens),
                       torch.tensor(parents), torch.tensor(uniforms)).numpy()
        np.testing.assert_array_equal(got, expected)
        last = int(rng.integers(0, len(nodes)))
        tried = torch.tensor((parents == last) & (nodes > 0))
        np.testing.assert_allclose(without_tokens(torch.tensor(probs[last]), torch.tensor(tokens), tried).numpy(),
                                   residual_probs(probs[last], tokens, parents, last), rtol=1e-6)
