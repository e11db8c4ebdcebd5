"""Static speculation trees: choices -> the constant buffers every engine bakes in.

Pure numpy, so the runtime and the build side share one implementation.

Node order: the root (index 0, the base model's own next token) first, then the
choices sorted by (depth, ranks). Every parent therefore precedes its children and
the nodes of one depth are contiguous, so the first ``n`` nodes of a tree are a
valid smaller tree (used when the context is nearly full).

A tree may also carry a *copy chain*: C more nodes (indices N..N+C-1) hanging in a
line under the root, whose tokens are not drafted by the heads but copied from the
token history by the runtime (prompt lookup, see copy_drafts.py). They are verified
with the drafted nodes in the same call; the first c of them are a valid chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidTreeError
from .tree_presets import TREE_PRESETS, Choices


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class DepthPlan:
    """How the nodes of one depth are drafted from the nodes one level up.

    Head ``depth - 1`` runs once on each parent (batched); node ``child_start + i``
    takes candidate ``child_rank[i]`` of parent slot ``child_parent_slot[i]``.
    """

    depth: int
    parent_nodes: np.ndarray  # [n_parents] node indices at depth-1 that have children
    child_start: int  # first node index at this depth
    child_stop: int  # one past the last node index at this depth
    child_parent_slot: np.ndarray  # [n_children] index into parent_nodes
    child_rank: np.ndarray  # [n_children] top-k rank of the child under its parent
    top_k: int  # candidates each parent must produce (max rank + 1)


@dataclass(frozen=True)
class TreeBuffers:
    """The static tree, as arrays over its V = N + C verified nodes: the N drafted nodes
    (root included) then the C copy-chain nodes. D = drafted depth, W = max(D, C) + 1."""

    choices: Choices  # sorted, root excluded
    copy_nodes: int  # C: length of the copy chain under the root (0: none)
    parents: np.ndarray  # [V] parent node index, -1 for the root
    depths: np.ndarray  # [V] 0 for the root; also the position offset of the node
    attention_mask: np.ndarray  # [V, V] bool: node i sees node j iff j is i or an ancestor
    ancestors: np.ndarray  # [V, W] node indices root..node, padded with -1
    retrieve_paths: np.ndarray  # [P, W] ancestors of each leaf (root-to-leaf paths), the copy chain's last
    depth_plans: tuple[DepthPlan, ...]  # one per drafted depth 1..D

    @property
    def num_nodes(self) -> int:
        """N: the drafted nodes, root included (the engine's tree_tokens)."""
        return int(self.parents.shape[0]) - self.copy_nodes

    @property
    def num_verified(self) -> int:
        """V = N + C: every node a full step verifies."""
        return int(self.parents.shape[0])

    @property
    def max_depth(self) -> int:
        """D: the deepest drafted node (the heads it needs)."""
        return len(self.depth_plans)

    @property
    def path_length(self) -> int:
        """W = max(D, C) + 1: the longest path a step can accept, root included."""
        return int(self.ancestors.shape[1])

    @property
    def drafted_depths(self) -> np.ndarray:
        """[N] depths of the drafted nodes (non-decreasing)."""
        return self.depths[: self.num_nodes]

    def verified_nodes(self, drafted: int, copied: int) -> np.ndarray:
        """Node indices of a call that sends the first ``drafted`` tree nodes and the first ``copied``
        chain nodes, in the order the engine lays them out: [drafted + copied]."""
        return np.concatenate([np.arange(drafted), self.num_nodes + np.arange(copied)])

    @classmethod
    def from_name(cls, name: str, num_heads: int | None = None, copy_nodes: int = 0) -> TreeBuffers:
        if name not in TREE_PRESETS:
            raise InvalidTreeError(
                f"unknown tree preset {name!r}; choose one of {', '.join(sorted(TREE_PRESETS))} "
                "or pass a JSON file holding a list of choices such as [[0], [0, 0], [1]]"
            )
        return cls.from_choices(TREE_PRESETS[name], num_heads=num_heads, copy_nodes=copy_nodes)

    @classmethod
    def from_spec(cls, spec: str | Path, num_heads: int | None = None, copy_nodes: int | None = None,
                  default_copy_nodes: int = 0) -> TreeBuffers:
        """A preset name, or the path of a JSON file: a list of choices, or an object
        ``{"choices": [...], "copy_nodes": C}``. The chain is ``copy_nodes`` when given, else the
        file's, else ``default_copy_nodes``."""
        if str(spec) in TREE_PRESETS:
            return cls.from_name(str(spec), num_heads, default_copy_nodes if copy_nodes is None else copy_nodes)
        path = Path(spec)
        if not path.is_file():
            return cls.from_name(str(spec), num_heads)  # raises, listing the presets
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidTreeError(f"tree file {path} is not valid JSON: {error}") from None
        choices, file_copy_nodes = tree_file_contents(data, str(path))
        if copy_nodes is None:
            copy_nodes = default_copy_nodes if file_copy_nodes is None else file_copy_nodes
        return cls.from_choices(choices, num_heads=num_heads, copy_nodes=copy_nodes)

    @classmethod
    def from_choices(cls, choices, num_heads: int | None = None, copy_nodes: int = 0) -> TreeBuffers:
        """Validate ``choices`` and ``copy_nodes`` and build every buffer.

        ``num_heads``, when given, bounds the drafted depth: depth d is drafted by head d.
        """
        paths = _validated_paths(choices, num_heads)
        chain = _validated_copy_nodes(copy_nodes)
        paths.sort(key=lambda path: (len(path), path))
        index_of = {(): 0} | {path: i + 1 for i, path in enumerate(paths)}
        n = len(paths) + 1
        v = n + chain
        depth = max((len(p) for p in paths), default=0)

        parents = np.full(v, -1, dtype=np.int64)
        ranks = np.zeros(n, dtype=np.int64)
        depths = np.zeros(v, dtype=np.int64)
        ancestors = np.full((v, max(depth, chain) + 1), -1, dtype=np.int64)
        ancestors[0, 0] = 0
        for path, node in index_of.items():
            if not path:
                continue
            parents[node] = index_of[path[:-1]]
            ranks[node] = path[-1]
            depths[node] = len(path)
            for d in range(len(path) + 1):
                ancestors[node, d] = index_of[path[:d]]
        for k in range(chain):  # the copy chain: root -> n -> n+1 -> ...
            node = n + k
            parents[node] = node - 1 if k else 0
            depths[node] = k + 1
            ancestors[node, : k + 2] = [0, *range(n, node + 1)]

        mask = np.zeros((v, v), dtype=bool)
        for node in range(v):
            mask[node, ancestors[node, : depths[node] + 1]] = True

        has_child = np.zeros(v, dtype=bool)
        has_child[parents[1:]] = True
        leaves = np.flatnonzero(~has_child)
        retrieve_paths = ancestors[leaves]

        plans = []
        for d in range(1, depth + 1):
            children = np.flatnonzero(depths[:n] == d)  # drafted nodes only
            parent_nodes = np.unique(parents[children])  # sorted, so slots follow node order
            plans.append(
                DepthPlan(
                    depth=d,
                    parent_nodes=_frozen(parent_nodes),
                    child_start=int(children[0]),
                    child_stop=int(children[-1]) + 1,
                    child_parent_slot=_frozen(np.searchsorted(parent_nodes, parents[children])),
                    child_rank=_frozen(ranks[children].copy()),
                    top_k=int(ranks[children].max()) + 1,
                )
            )
        return cls(
            choices=tuple(paths),
            copy_nodes=chain,
            parents=_frozen(parents),
            depths=_frozen(depths),
            attention_mask=_frozen(mask),
            ancestors=_frozen(ancestors),
            retrieve_paths=_frozen(retrieve_paths),
            depth_plans=tuple(plans),
        )

    def choices_as_lists(self) -> list[list[int]]:
        return [list(path) for path in self.choices]

    def drawing(self) -> str:
        """An indented text drawing, one node per line: index, ranks path, depth."""
        lines = ["0 root"]
        for node in range(1, self.num_nodes):
            path = self.choices[node - 1]
            lines.append(f"{'  ' * len(path)}{node} rank {path[-1]}  {list(path)}")
        for k in range(self.copy_nodes):
            lines.append(f"{'  ' * (k + 1)}{self.num_nodes + k} copy {k + 1}")
        return "\n".join(lines)


MAX_COPY_NODES = 32


def tree_file_contents(data, where: str) -> tuple[object, int | None]:
    """A tree file's JSON -> (choices, copy_nodes or None): a list of choices, or {"choices", "copy_nodes"}."""
    if isinstance(data, dict):
        unknown = set(data) - {"choices", "copy_nodes"}
        if "choices" not in data or unknown:
            raise InvalidTreeError(f"tree file {where} must hold a list of choices or an object with "
                                   f'"choices" and optionally "copy_nodes" (found keys {sorted(data)})')
        return data["choices"], data.get("copy_nodes")
    return data, None


def _validated_copy_nodes(copy_nodes) -> int:
    if (isinstance(copy_nodes, bool) or not isinstance(copy_nodes, (int, np.integer))
            or not (copy_nodes == 0 or 2 <= copy_nodes <= MAX_COPY_NODES)):
        raise InvalidTreeError(f"copy_nodes must be 0 (no copy chain) or 2..{MAX_COPY_NODES}, got {copy_nodes!r}")
    return int(copy_nodes)


def _validated_paths(choices, num_heads: int | None) -> list[tuple[int, ...]]:
    if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
        raise InvalidTreeError(f"a tree must be a list of choices such as [[0], [0, 0], [1]], got {choices!r}")
    paths: list[tuple[int, ...]] = []
    for choice in choices:
        if isinstance(choice, (str, bytes)) or not hasattr(choice, "__iter__"):
            raise InvalidTreeError(f"tree choice {choice!r} is not a list of ranks such as [0, 1]")
        path = tuple(choice)
        if not path:
            raise InvalidTreeError("tree choice [] is empty: the root is implicit, list only its descendants")
        for rank in path:
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
                raise InvalidTreeError(
                    f"tree choice {list(path)} has bad rank {rank!r}: ranks are non-negative integers"
                )
        paths.append(tuple(int(rank) for rank in path))
    seen: set[tuple[int, ...]] = set()
    for path in paths:
        if path in seen:
            raise InvalidTreeError(f"tree choice {list(path)} appears twice; each path may be listed once")
        seen.add(path)
    for path in paths:
        if len(path) > 1 and path[:-1] not in seen:
            raise InvalidTreeError(
                f"tree choice {list(path)} has no parent: add {list(path[:-1])} to the tree"
            )
        if num_heads is not None and len(path) > num_heads:
            raise InvalidTreeError(
                f"tree choice {list(path)} is {len(path)} deep but the heads only draft "
                f"{num_heads} tokens; drop it or use heads with more heads"
            )
    return paths
