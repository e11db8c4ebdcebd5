"""The engine's contract: its graph name, input/output names and symbolic dims, in one place.

Both halves import these names; the manifest records the engine's signature with them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


ENGINE_GRAPH = "engine"  # the artifact's one graph: engine.onnx (+ engine.plan for TensorRT)

# Host inputs, in graph order, then the past K/V.
INPUT_IDS = "input_ids"  # [new_tokens] int64: causal tokens appended before the tree (the prompt at prefill)
TREE_TOKENS = "tree_tokens"  # [tree_nodes] int64: the first n nodes of the static tree, root first
COPY_TOKENS = "copy_tokens"  # [copy_nodes] int64: the first c nodes of the copy chain (prompt lookup); [0] without one

TEMPERATURE = "temperature"  # [] float32: 0 greedy (lossless), > 0 speculative sampling
RANDOM_UNIFORMS = "random_uniforms"  # [V] float32, V = the tree's drafted + chain nodes: one draw per row (sampling.py)
SAMPLING_INPUTS = (TEMPERATURE, RANDOM_UNIFORMS)
HOST_INPUTS = (INPUT_IDS, TREE_TOKENS, COPY_TOKENS, *SAMPLING_INPUTS)

# Host outputs, then the present K/V.
NEXT_TREE_TOKENS = "next_tree_tokens"  # [tree_nodes] int64: the first n nodes of the next tree
ACCEPTED_NODES = "accepted_nodes"  # [W] int64: rows of tree_tokens ++ copy_tokens, root first, valid up to accepted_count
ACCEPTED_COUNT = "accepted_count"  # [] int64, >= 1 (the root)
HOST_OUTPUTS = (NEXT_TREE_TOKENS, ACCEPTED_NODES, ACCEPTED_COUNT)

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."

# Engine metadata (ONNX metadata_props): what the graph bakes in, checked against the manifest.
TREE_METADATA = "hydra_export.tree_choices"  # JSON list of choices
COPY_NODES_METADATA = "hydra_export.copy_nodes"  # length of the copy chain
MAX_SEQ_LEN_METADATA = "hydra_export.max_seq_len"

# Symbolic dims.
NEW_TOKENS = "new_tokens"  # T: input_ids length
TREE_NODES = "tree_nodes"  # n: tree_tokens length
COPY_NODES = "copy_nodes"  # c: copy_tokens length (a static 0 when the tree has no copy chain)
PAST_SEQUENCE = "past_sequence"  # P: dim 1 of every past_key_values.* input
PRESENT_SEQUENCE = "present_sequence"  # T + W: dim 1 of every present.* output (W = longest path)


def past_key_name(layer: int, part: str) -> str:
    return f"{PAST_PREFIX}{layer}.{part}"


def present_name(layer: int, part: str) -> str:
    return f"{PRESENT_PREFIX}{layer}.{part}"
