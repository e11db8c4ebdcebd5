"""Growing the tree with the highest expected acceptance for measured head accuracies.

rank_probs[k][r] is the probability that head k's rank-r candidate is the base model's
token, given the path before it was right (what teacher-forced evaluation measures).
The chance a node is accepted is the product of rank_probs along its path, and the
expected tokens per step is 1 + the sum of those chances over the nodes. Since a child
is never likelier than its parent, adding the likeliest frontier node each time gives
the best tree of every size (the construction Medusa uses for its sparse trees).

With a copy chain in the budget, nodes compete with the chain, whose acceptance overlaps the
heads' (both may propose the same token), so splits are scored by the decode simulator: by
accepted length, or where verified rows are not free (a CPU) by the modelled speedup over the
step costs measured there (StepCosts).
"""

from __future__ import annotations

import heapq

import numpy as np

from .decode_simulator import DecodeTrace, simulate
from .step_costs import StepCosts
from .tree import TreeBuffers
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


def rank_probs_from_traces(traces: list[DecodeTrace], max_rank: int) -> np.ndarray:
    """[K, max_rank]: how often head k's rank-r candidate is the true token, over every traced step."""
    ranks = np.concatenate([trace.ranks for trace in traces])  # [steps, K]
    return np.stack([np.bincount(ranks[:, k][ranks[:, k] >= 0], minlength=max_rank)[:max_rank]
                     for k in range(ranks.shape[1])]) / max(len(ranks), 1)


def search_trees(traces: list[DecodeTrace], budgets: list[int], copy_lengths: list[int],
                 max_rank: int, costs: StepCosts = StepCosts()) -> list[dict]:
    """For each budget of verified nodes (root included), the drafted tree and copy chain that
    split it best: head trees grown from the traces' rank statistics (grow_tree), every split
    scored by replaying the traces (simulate). Best = the longest accepted length where rows are
    free (the default ``costs``), else the highest modelled speedup (``SimulatedRun.modelled_speedup``)."""
    rank_probs = rank_probs_from_traces(traces, max_rank)
    results = []
    for budget in budgets:
        candidates = []
        for copy in sorted({c for c in copy_lengths if c < budget}):
            choices, _ = grow_tree(rank_probs, budget - copy)
            run = simulate(TreeBuffers.from_choices(choices, copy_nodes=copy), traces)
            candidates.append({"copy_nodes": copy, "choices": [list(c) for c in choices],
                               "simulated_accepted_length": round(run.mean_accepted_length, 4),
                               "mean_verified_rows": round(run.mean_verified_rows, 3),
                               "modelled_speedup": round(run.modelled_speedup(costs), 4),
                               "copy_wins": run.copy_wins, "steps": len(run.accepted_lengths)})
        score = "simulated_accepted_length" if costs.free else "modelled_speedup"
        best = max(candidates, key=lambda c: c[score])
        results.append({"nodes": budget, "best": best, "candidates": candidates})
    return results
