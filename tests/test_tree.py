import json

import numpy as np
import pytest

from hydra_runtime import TREE_PRESETS, InvalidTreeError, TreeBuffers


def test_small_tree_buffers_match_hand_written():
    # Root 0; depth 1: (0,)=1, (1,)=2; depth 2: (0,0)=3, (0,1)=4, (1,0)=5; depth 3: (0,0,0)=6.
    tree = TreeBuffers.from_choices([[1, 0], [0], [0, 0, 0], [1], [0, 0], [0, 1]])
    assert tree.choices == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    # Each row: the node itself and its ancestors, nothing else.
    expected_mask = np.array(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 0, 1, 0, 0, 1, 0],
            [1, 1, 0, 1, 0, 0, 1],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(tree.attention_mask, expected_mask)
    np.testing.assert_array_equal(tree.depths, [0, 1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(tree.parents, [-1, 0, 0, 1, 1, 2, 3])
    # Leaves 4, 5, 6, root first, padded with -1 to depth + 1.
    np.testing.assert_array_equal(tree.retrieve_paths, [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]])
    depth2 = tree.depth_plans[1]
    np.testing.assert_array_equal(depth2.parent_nodes, [1, 2])
    assert (depth2.child_start, depth2.child_stop, depth2.top_k) == (3, 6, 2)
    np.testing.assert_array_equal(depth2.child_parent_slot, [0, 0, 1])
    np.testing.assert_array_equal(depth2.child_rank, [0, 1, 0])


def test_copy_chain_hangs_under_the_root_after_the_drafted_nodes():
    tree = TreeBuffers.from_choices([[0], [1], [0, 0]], copy_nodes=3)  # drafted 0..3, chain 4, 5, 6
    assert (tree.num_nodes, tree.num_verified, tree.max_depth, tree.path_length) == (4, 7, 2, 4)
    np.testing.assert_array_equal(tree.parents, [-1, 0, 0, 1, 0, 4, 5])
    np.testing.assert_array_equal(tree.depths, [0, 1, 1, 2, 1, 2, 3])
    np.testing.assert_array_equal(tree.drafted_depths, [0, 1, 1, 2])
    np.testing.assert_array_equal(tree.retrieve_paths, [[0, 2, -1, -1], [0, 1, 3, -1], [0, 4, 5, 6]])
    chain = tree.attention_mask[4:, :]  # the chain sees the root and itself, never a drafted node
    np.testing.assert_array_equal(chain, [[1, 0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1, 1]])
    assert not tree.attention_mask[:4, 4:].any()
    assert [plan.child_stop for plan in tree.depth_plans] == [3, 4]  # the heads draft only nodes 1..3
    np.testing.assert_array_equal(tree.verified_nodes(2, 2), [0, 1, 4, 5])
    assert "6 copy 3" in tree.drawing()


def test_a_tree_file_may_carry_a_copy_chain(tmp_path):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps({"choices": [[0], [0, 0]], "copy_nodes": 4}))
    assert TreeBuffers.from_spec(path).copy_nodes == 4
    assert TreeBuffers.from_spec(path, copy_nodes=0).copy_nodes == 0  # the caller's choice wins
    assert TreeBuffers.from_spec("tree8", copy_nodes=6).num_verified == 8 + 6
    path.write_text(json.dumps({"choices": [[0]], "copy": 4}))
    with pytest.raises(InvalidTreeError, match="copy_nodes"):
        TreeBuffers.from_spec(path)


@pytest.mark.parametrize("copy_nodes", [1, -2, 33, True, 2.0, "4"])
def test_bad_copy_chain_lengths_are_refused(copy_nodes):
    with pytest.raises(InvalidTreeError, match="copy_nodes must be 0"):
        TreeBuffers.from_choices([[0]], copy_nodes=copy_nodes)


def test_chain_mask_is_causal():
    tree = TreeBuffers.from_name("chain4")
    np.testing.assert_array_equal(tree.attention_mask, np.tril(np.ones((5, 5), dtype=bool)))
    np.testing.assert_array_equal(tree.retrieve_paths, [[0, 1, 2, 3, 4]])


@pytest.mark.parametrize("name", sorted(TREE_PRESETS))
def test_presets_are_consistent(name):
    tree = TreeBuffers.from_name(name, num_heads=4)
    assert tree.num_nodes == len(TREE_PRESETS[name]) + 1
    # Parents precede children, so any prefix of nodes is itself a tree.
    assert all(tree.parents[i] < i for i in range(1, tree.num_nodes))
    # Mask rows = ancestor sets, derived independently by walking parents.
    for node in range(tree.num_nodes):
        seen, walk = set(), node
        while walk >= 0:
            seen.add(walk)
            walk = tree.parents[walk]
        assert set(np.flatnonzero(tree.attention_mask[node])) == seen


def test_mc_sim_7b_63_shape():
    tree = TreeBuffers.from_name("mc_sim_7b_63")
    assert tree.num_nodes == 64 and tree.max_depth == 4
    assert [plan.top_k for plan in tree.depth_plans] == [10, 10, 10, 2]


@pytest.mark.parametrize(
    "choices, message",
    [
        ([[0], [0]], r"\[0\] appears twice"),
        ([[0], [1, 0]], r"\[1, 0\] has no parent: add \[1\]"),
        ([[0], [0, -1]], r"\[0, -1\] has bad rank -1"),
        ([[0], [0, "a"]], r"bad rank 'a'"),
        ([[]], "empty"),
        ("0,1", "list of choices"),
    ],
)
def test_invalid_trees_name_the_offending_path(choices, message):
    with pytest.raises(InvalidTreeError, match=message):
        TreeBuffers.from_choices(choices)


def test_too_deep_for_the_heads():
    with pytest.raises(InvalidTreeError, match=r"\[0, 0, 0\] is 3 deep but the heads only draft 2"):
        TreeBuffers.from_choices([[0], [0, 0], [0, 0, 0]], num_heads=2)


def test_unknown_preset_lists_presets():
    with pytest.raises(InvalidTreeError, match="mc_sim_7b_63"):
        TreeBuffers.from_name("tree1000")


def test_tree_from_json_file(tmp_path):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps([[0], [1], [0, 0]]))
    assert TreeBuffers.from_spec(path).num_nodes == 4
    path.write_text("[[0], ")
    with pytest.raises(InvalidTreeError, match="not valid JSON"):
        TreeBuffers.from_spec(path)


def test_buffers_are_read_only():
    tree = TreeBuffers.from_name("tree8")
    with pytest.raises(ValueError):
        tree.attention_mask[0, 1] = True
