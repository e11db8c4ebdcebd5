"""Static speculation trees: choices -> the constant buffers every engine bakes in.

Pure numpy, so the runtime and the build side share one implementation.

Node order: the root (index 0, the base model's own next token) first, then the
choices sorted by (depth, ranks). Every parent therefore precedes its children and
the nodes of one depth are contiguous, so the first ``n`` nodes of a tree are a
valid smaller tree (used when the context is nearly full).
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
    """The static tree, as arrays. N = num_nodes (root included), D = max depth."""

    choices: Choices  # sorted, root excluded
    parents: np.ndarray  # [N] parent node index, -1 for the root
    ranks: np.ndarray  # [N] top-k rank under the parent, 0 for the root
    depths: np.ndarray  # [N] 0 for the root; also the position offset of the node
    attention_mask: np.ndarray  # [N, N] bool: node i sees node j iff j is i or an ancestor
    ancestors: np.ndarray  # [N, D+1] node indices root..node, padded with -1
    retrieve_paths: np.ndarray  # [P, D+1] ancestors of each leaf (root-to-leaf paths)
    depth_plans: tuple[DepthPlan, ...]  # one per depth 1..D

    @property
    def num_nodes(self) -> int:
        return int(self.parents.shape[0])

    @property
    def max_depth(self) -> int:
        return len(self.depth_plans)

    @classmethod
    def from_name(cls, name: str, num_heads: int | None = None) -> TreeBuffers:
        if name not in TREE_PRESETS:
            raise InvalidTreeError(
                f"unknown tree preset {name!r}; choose one of {', '.join(sorted(TREE_PRESETS))} "
                "or pass a JSON file holding a list of choices such as [[0], [0, 0], [1]]"
            )
        return cls.from_choices(TREE_PRESETS[name], num_heads=num_heads)

    @classmethod
    def from_spec(cls, spec: str | Path, num_heads: int | None = None) -> TreeBuffers:
        """A preset name, or the path of a JSON file with a list of choices."""
        if str(spec) in TREE_PRESETS:
            return cls.from_name(str(spec), num_heads)
        path = Path(spec)
        if not path.is_file():
            return cls.from_name(str(spec), num_heads)  # raises, listing the presets
        try:
            choices = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InvalidTreeError(f"tree file {path} is not valid JSON: {error}") from None
        return cls.from_choices(choices, num_heads=num_heads)

    @classmethod
    def from_choices(cls, choices, num_heads: int | None = None) -> TreeBuffers:
        """Validate ``choices`` and build every buffer.

        ``num_heads``, when given, bounds the depth: depth d is drafted by head d.
        """
        paths = _validated_paths(choices, num_heads)
        paths.sort(key=lambda path: (len(path), path))
        index_of = {(): 0} | {path: i + 1 for i, path in enumerate(paths)}
        n = len(paths) + 1
        depth = max((len(p) for p in paths), default=0)

        parents = np.full(n, -1, dtype=np.int64)
        ranks = np.zeros(n, dtype=np.int64)
        depths = np.zeros(n, dtype=np.int64)
        ancestors = np.full((n, depth + 1), -1, dtype=np.int64)
        ancestors[0, 0] = 0
        for path, node in index_of.items():
            if not path:
                continue
            parents[node] = index_of[path[:-1]]
            ranks[node] = path[-1]
            depths[node] = len(path)
            for d in range(len(path) + 1):
                ancestors[node, d] = index_of[path[:d]]

        mask = np.zeros((n, n), dtype=bool)
        for node in range(n):
            mask[node, ancestors[node, : depths[node] + 1]] = True

        has_child = np.zeros(n, dtype=bool)
        has_child[parents[1:]] = True
        leaves = np.flatnonzero(~has_child)
        retrieve_paths = ancestors[leaves]

        plans = []
        for d in range(1, depth + 1):
            children = np.flatnonzero(depths == d)
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
            parents=_frozen(parents),
            ranks=_frozen(ranks),
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
        return "\n".join(lines)


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
