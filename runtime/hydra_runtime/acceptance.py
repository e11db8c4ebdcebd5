"""Choosing the accepted path of a verified tree (numpy; shared by the runtime and the reference)."""

from __future__ import annotations

import numpy as np

from .tree import TreeBuffers


def longest_accepted_path(retrieve_paths: np.ndarray, node_ok: np.ndarray) -> np.ndarray:
    """The longest root-to-leaf prefix whose every node was accepted.

    retrieve_paths: [P, D+1] node indices, root first, padded with -1.
    node_ok: [n] bool, node i is accepted given its parent (the root's entry is ignored).
        Nodes >= n are treated as absent, so a truncated tree (first n nodes) works as is.
    Returns the accepted node indices, root first: [m+1].
    """
    n = node_ok.shape[0]
    children = retrieve_paths[:, 1:]  # [P, D]
    present = (children >= 0) & (children < n)
    ok = present & node_ok[np.clip(children, 0, n - 1)]
    lengths = np.cumprod(ok, axis=1).sum(axis=1)  # [P] accepted drafts along each path
    best = int(np.argmax(lengths))  # first longest path
    return retrieve_paths[best, : lengths[best] + 1].copy()


def _rows_of(tree: TreeBuffers, nodes: np.ndarray) -> np.ndarray:
    """[V]: the row each verified node sits in (nodes not verified -> 0, never read)."""
    rows_of = np.zeros(tree.num_verified, dtype=np.int64)
    rows_of[nodes] = np.arange(len(nodes))
    return rows_of


def parent_rows(tree: TreeBuffers, nodes: np.ndarray) -> np.ndarray:
    """nodes [m]: the tree node verified in each row (drafted prefix, then chain prefix) -> the row
    of each row's parent [m] (the root's is itself). A verified node's parent is always verified."""
    return _rows_of(tree, nodes)[np.maximum(tree.parents[nodes], 0)]


def longest_accepted_rows(tree: TreeBuffers, nodes: np.ndarray, row_ok: np.ndarray) -> np.ndarray:
    """The rows of the longest accepted path [a+1], root first. nodes [m]: the tree node of each
    row; row_ok [m]: row accepted given its parent. Nodes not verified count as rejected."""
    node_ok = np.zeros(tree.num_verified, dtype=bool)
    node_ok[nodes] = row_ok
    return _rows_of(tree, nodes)[longest_accepted_path(tree.retrieve_paths, node_ok)]


def greedy_node_ok(tokens: np.ndarray, predictions: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """tokens, predictions, parents: [n]. A node is accepted when it is its parent's argmax."""
    ok = tokens == predictions[np.maximum(parents, 0)]
    ok[0] = True
    return ok


def speculative_sampling_ok(
    tokens: np.ndarray, candidate_probs: np.ndarray, parents: np.ndarray, uniforms: np.ndarray
) -> np.ndarray:
    """Speculative sampling over each parent's children, in row order (rows [m]).

    candidate_probs[i]: the probability the base model gives tokens[i] after row i's parent;
    parents[i]: that parent's row (the root's is itself); uniforms[i]: row i's draw. A parent's
    first child is taken with its probability; if not, the next with its probability under what
    is left once the children tried are removed (a token already tried has none left), and so on;
    the first child taken is the only accepted one. Where none is taken, the token after the parent
    is drawn from what is left (``residual_probs``). The result is distributed exactly as sampling
    from the base model. Returns accepted [m] bool (the root's entry True).
    """
    m = tokens.shape[0]
    rows = np.arange(m)
    earlier_sibling = (parents[:, None] == parents[None, :]) & (rows[None, :] < rows[:, None]) & (rows[None, :] > 0)
    repeated = (earlier_sibling & (tokens[:, None] == tokens[None, :])).any(axis=1)
    probs = np.where(repeated, 0.0, candidate_probs)
    left = 1.0 - (earlier_sibling * probs[None, :]).sum(axis=1)  # mass not yet tried at the parent
    taken = (probs > 0) & (uniforms * left < probs)
    ok = taken & ~(earlier_sibling & taken[None, :]).any(axis=1)
    ok[0] = True
    return ok


def residual_probs(probs: np.ndarray, tokens: np.ndarray, parents: np.ndarray, last: int, verifying: bool = True
                   ) -> np.ndarray:
    """probs [V] after row ``last`` (the accepted path's end) without the tokens of its children
    rows, which were all tried and not taken (unnormalised; none removed when ``verifying`` is False)."""
    tried = (parents == last) & (np.arange(tokens.shape[0]) > 0) & verifying
    residual = probs.copy()
    residual[tokens[tried]] = 0.0
    return residual
