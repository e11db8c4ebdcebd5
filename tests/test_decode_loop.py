"""decode() and the binding plan on their own: a fake backend that follows the engine's contract
(engine.py) over a toy "model" whose greedy next token is a fixed function of the previous one."""

import numpy as np
import pytest

from hydra_runtime import TreeBuffers
from hydra_runtime.acceptance import greedy_node_ok, longest_accepted_rows, parent_rows
from hydra_runtime.backends.decode_backend import BindingPlan
from hydra_runtime.decode_loop import StopRule, decode, nodes_that_fit
from hydra_runtime.manifest import GraphEntry, TensorSpec


def next_token(token: int) -> int:
    return (3 * token + 1) % 50


class FakeBackend:
    """The engine's contract with a toy model: the cache holds token ids instead of K/V rows.
    ``drafts_right`` decides whether the fake heads propose the model's own continuation."""

    name = "fake"
    max_causal_tokens = None

    def __init__(self, tree: TreeBuffers, capacity: int, drafts_right: bool = True):
        self.tree, self.capacity, self.drafts_right = tree, capacity, drafts_right
        self.cache: list[int] = []
        self.length = 0
        self.calls: list[tuple[int, int]] = []  # (T, n) of every call
        self.copies: list[list[int]] = []  # copy_tokens of every call
        self._written: list[int] = []

    def reset(self) -> None:
        self.cache, self.length = [], 0

    def run(self, feeds):
        causal, tree_tokens, copy_tokens = list(feeds["input_ids"]), feeds["tree_tokens"], feeds["copy_tokens"]
        n, c = len(tree_tokens), len(copy_tokens)
        self.calls.append((len(causal), n))
        self.copies.append(copy_tokens.tolist())
        assert c <= self.tree.copy_nodes
        path_length = self.tree.path_length
        assert self.length + len(causal) + path_length <= self.capacity
        max_seq_len = self.capacity - path_length
        nodes = self.tree.verified_nodes(n, c)
        assert self.length + len(causal) + self.tree.depths[nodes].max() < max_seq_len  # every position fits
        verified = np.concatenate([tree_tokens, copy_tokens])
        predictions = np.array([next_token(int(t)) for t in verified])
        ok = greedy_node_ok(verified, predictions, parent_rows(self.tree, nodes)) & (len(causal) == 0)
        ok[0] = True
        path = longest_accepted_rows(self.tree, nodes, ok)
        root = int(predictions[path[-1]])
        self._written = causal + [int(t) for t in verified[path]]
        next_tree = np.empty(n, dtype=np.int64)  # drafts: the true continuation of each node's parent
        next_tree[0] = root
        for node in range(1, n):
            parent = self.tree.parents[node]
            right = next_token(int(next_tree[parent]))
            rank = self.tree.choices[node - 1][-1]
            next_tree[node] = right + rank if self.drafts_right else 49 - right
        rows = np.zeros(path_length, dtype=np.int64)
        rows[: len(path)] = path
        return {"next_tree_tokens": next_tree, "accepted_nodes": rows, "accepted_count": np.array(len(path))}

    def commit(self, rows: int) -> None:
        self.cache += self._written[:rows]
        self.length += rows

    def close(self) -> None:
        pass


def autoregressive(prompt, count):
    out, token = [], prompt[-1]
    for _ in range(count):
        token = next_token(token)
        out.append(token)
    return out


TREE = TreeBuffers.from_choices([[0], [1], [0, 0], [0, 1], [0, 0, 0]])  # rank-0 chain of depth 3


def test_right_drafts_are_accepted_to_full_depth_and_output_is_lossless():
    backend = FakeBackend(TREE, capacity=200)
    stop = StopRule(max_new_tokens=40, eos_token_ids=frozenset(), max_seq_len=196, prompt_tokens=3)
    ids, stats = decode(backend, [7, 8, 9], stop, TREE)
    assert ids == autoregressive([7, 8, 9], 40)
    assert backend.calls[0] == (2, TREE.num_nodes)  # prefill: prompt but its last token, a full tree
    assert set(stats.accepted_lengths) == {4}  # every step: 3 drafts + the root's successor
    assert backend.cache[: 3 + len(ids) - 1] == [7, 8, 9] + ids[:-1]  # the cache holds the sequence in order


def test_wrong_drafts_still_give_the_models_tokens():
    backend = FakeBackend(TREE, capacity=200, drafts_right=False)
    stop = StopRule(max_new_tokens=25, eos_token_ids=frozenset(), max_seq_len=196, prompt_tokens=2)
    ids, stats = decode(backend, [4, 5], stop, TREE)
    assert ids == autoregressive([4, 5], 25)
    assert set(stats.accepted_lengths) == {1}


def test_autoregressive_mode_sends_one_node_trees():
    backend = FakeBackend(TREE, capacity=200)
    stop = StopRule(max_new_tokens=10, eos_token_ids=frozenset(), max_seq_len=196, prompt_tokens=2)
    ids, stats = decode(backend, [4, 5], stop, TREE, speculative=False)
    assert ids == autoregressive([4, 5], 10)
    assert all(n == 1 for _, n in backend.calls) and stats.accepted_lengths == []


def test_the_tree_shrinks_to_what_fits_at_the_end_of_the_context():
    backend = FakeBackend(TREE, capacity=30 + TREE.path_length)
    stop = StopRule(max_new_tokens=100, eos_token_ids=frozenset({}), max_seq_len=30, prompt_tokens=3)
    ids, stats = decode(backend, [1, 2, 3], stop, TREE)
    assert stats.stop_reason == "context" and 3 + len(ids) == 30
    assert ids == autoregressive([1, 2, 3], 27)
    assert min(n for _, n in backend.calls) < TREE.num_nodes  # tree prefixes near the end (positions checked above)


def test_long_prompts_are_fed_in_chunks():
    backend = FakeBackend(TREE, capacity=200)
    backend.max_causal_tokens = 4
    stop = StopRule(max_new_tokens=12, eos_token_ids=frozenset(), max_seq_len=196, prompt_tokens=11)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    ids, _ = decode(backend, prompt, stop, TREE)
    assert ids == autoregressive(prompt, 12)
    assert backend.calls[:3] == [(4, 1), (4, 1), (0, TREE.num_nodes)]  # 5 + 5 tokens, then the last one
    assert backend.cache[: len(prompt)] == prompt


def test_eos_stops_inside_an_accepted_path():
    backend = FakeBackend(TREE, capacity=200)
    expected = autoregressive([7, 8, 9], 40)
    eos = expected[10]
    stop = StopRule(max_new_tokens=40, eos_token_ids=frozenset({eos}), max_seq_len=196, prompt_tokens=3)
    ids, stats = decode(backend, [7, 8, 9], stop, TREE)
    assert ids == expected[: expected.index(eos) + 1] and stats.stop_reason == "eos"


COPY_TREE = TreeBuffers.from_choices([[0], [1], [0, 0]], copy_nodes=6)
CYCLE = [7, 22, 17, 2]  # next_token cycles through these: the history repeats itself every 4 tokens


def test_a_matching_copy_chain_is_accepted_in_full():
    backend = FakeBackend(COPY_TREE, capacity=200, drafts_right=False)  # the heads are always wrong
    stop = StopRule(max_new_tokens=40, eos_token_ids=frozenset(), max_seq_len=194, prompt_tokens=5)
    ids, stats = decode(backend, CYCLE + [7], stop, COPY_TREE)
    assert ids == autoregressive([7], 40)
    # After "7 22" (2 tokens agree): 4 nodes; from then on the copy agrees far back: the whole chain.
    assert backend.copies[0] == [] and backend.copies[1] == (CYCLE * 2)[2:6]
    assert stats.accepted_lengths[0] == 5 and set(stats.accepted_lengths[1:]) == {7}  # + the root's successor


def test_the_copy_chain_is_rejected_when_the_history_misleads():
    backend = FakeBackend(COPY_TREE, capacity=200)
    prompt = [7, 22, 5, 5, 5, 7]  # the model says 22 17 ...; lookup proposes 5 5 5 7 after "7 22"
    stop = StopRule(max_new_tokens=30, eos_token_ids=frozenset(), max_seq_len=194, prompt_tokens=6)
    ids, stats = decode(backend, prompt, stop, COPY_TREE)
    assert ids == autoregressive(prompt, 30)
    assert backend.copies[1] == [5, 5, 5, 7]
    assert stats.accepted_lengths[0] == 3  # the heads' two right drafts + the root's successor, not the chain


def test_the_copy_chain_shrinks_at_the_end_of_the_context():
    backend = FakeBackend(COPY_TREE, capacity=30 + COPY_TREE.path_length, drafts_right=False)
    stop = StopRule(max_new_tokens=100, eos_token_ids=frozenset(), max_seq_len=30, prompt_tokens=5)
    ids, stats = decode(backend, CYCLE + [7], stop, COPY_TREE)
    assert stats.stop_reason == "context" and 5 + len(ids) == 30 and ids == autoregressive([7], 25)
    assert 0 < min(len(copy) for copy in backend.copies[1:]) < COPY_TREE.copy_nodes  # positions checked in run()


def test_autoregressive_mode_sends_no_copy_chain():
    backend = FakeBackend(COPY_TREE, capacity=200)
    stop = StopRule(max_new_tokens=10, eos_token_ids=frozenset(), max_seq_len=194, prompt_tokens=5)
    ids, _ = decode(backend, CYCLE + [7], stop, COPY_TREE, speculative=False)
    assert ids == autoregressive([7], 10) and all(copy == [] for copy in backend.copies)


@pytest.mark.parametrize("room, expected", [(0, 1), (1, 3), (2, 5), (3, 6), (99, 6)])
def test_nodes_that_fit(room, expected):
    # depths of TREE: root 0; [0], [1] at 1; [0,0], [0,1] at 2; [0,0,0] at 3
    assert nodes_that_fit(TREE.depths, room) == expected


def test_binding_plan_sizes_present_rows_from_the_call():
    spec = lambda name, dtype, shape: TensorSpec(name, dtype, shape)  # noqa: E731
    entry = GraphEntry("engine.onnx", inputs=(
        spec("input_ids", "int64", ("new_tokens",)), spec("tree_tokens", "int64", ("tree_nodes",)),
        spec("past_key_values.0.key", "float", (1, "past_sequence", 2, 4)),
        spec("past_key_values.0.value", "float", (1, "past_sequence", 2, 4))),
        outputs=(spec("next_tree_tokens", "int64", ("tree_nodes",)), spec("accepted_nodes", "int64", (4,)),
                 spec("accepted_count", "int64", ()),
                 spec("present.0.key", "float", (1, "present_sequence", 2, 4)),
                 spec("present.0.value", "float", (1, "present_sequence", 2, 4))))
    addresses = {"past_key_values.0.key": 100, "past_key_values.0.value": 200, "present.0.key": 100,
                 "present.0.value": 200}
    plan = BindingPlan.of(entry, addresses.__getitem__)
    assert plan.past == [("past_key_values.0.key", 100), ("past_key_values.0.value", 200)]
    assert [spec.name for spec in plan.host_outputs] == ["next_tree_tokens", "accepted_nodes", "accepted_count"]
    feeds = {"input_ids": np.arange(7), "tree_tokens": np.arange(6)}
    assert plan.symbols(feeds, past_length=11) == {"past_sequence": 11, "new_tokens": 7, "tree_nodes": 6,
                                                   "present_sequence": 7 + 4}
    assert plan.rows_written(feeds) == 11
    plan.check_room(feeds, past_length=9, capacity=20)  # 9 + 7 + 4 rows fit exactly
    with pytest.raises(Exception, match="would write 11 K/V rows after 10 cached ones, past the cache's 20 rows"):
        plan.check_room(feeds, past_length=10, capacity=20)
