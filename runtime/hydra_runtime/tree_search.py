"""Growing the tree with the highest expected acceptance for measured head accuracies.

rank_probs[k][r] is the probability that head k's rank-r candidate is the base model's
token, given the path before it was right (what teacher-forced evaluation measures).
The chance a node is accepted is the product of rank_probs along its path, and the
expected tokens per step is 1 + the sum of those chances over the nodes. Since a child
is never likelier than its parent, adding the likeliest frontier node each time gives
the best tree of every size (the construction Medusa uses for its sparse trees).
"""

from __future__ import annotations

import heapq

import numpy as np

from .tree_presets import Choices


def grow_tree(rank_probs: np.ndarray, num_nodes: int) -> tuple[Choices, float]:
    """rank_probs [K, R] -> (choices of a tree with ``num_nodes`` nodes, root included; expected tokens/step)."""
    heads, ranks = rank_probs.shape
    frontier: list[tuple[float, tuple[int, ...]]] = [(-float(rank_probs[0, 0]), (0,))]
    chosen: dict[tuple[int, ...], float] = {}
    while frontier and len(chosen) < num_nodes - 1:
        negative, path = heapq.heappop(frontier)
        chance = -negative
        chosen[path] = chance
        if path[-1] + 1 < ranks:  # the next sibling
            sibling = path[:-1] + (path[-1] + 1,)
            parent_chance = chosen[path[:-1]] if len(path) > 1 else 1.0
            heapq.heappush(frontier, (-parent_chance * float(rank_probs[len(path) - 1, path[-1] + 1]), sibling))
        if len(path) < heads:  # the first child
            heapq.heappush(frontier, (-chance * float(rank_probs[len(path), 0]), path + (0,)))
    return tuple(sorted(chosen, key=lambda p: (len(p), p))), 1.0 + sum(chosen.values())


def expected_tokens_per_step(choices: Choices, rank_probs: np.ndarray) -> float:
    """1 + sum over nodes of the product of rank_probs along the node's path."""
    total = 1.0
    for path in choices:
        total += float(np.prod([rank_probs[depth, rank] for depth, rank in enumerate(path)]))
    return total
