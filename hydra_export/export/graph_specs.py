"""The artifact's engine graph: its module, named inputs/outputs, sample inputs and dynamic dims."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn

from hydra_runtime.engine import (
    COPY_NODES,
    COPY_NODES_METADATA,
    COPY_TOKENS,
    ENGINE_GRAPH,
    HOST_INPUTS,
    HOST_OUTPUTS,
    INPUT_IDS,
    MAX_SEQ_LEN_METADATA,
    NEXT_TREE_TOKENS,
    NEW_TOKENS,
    PAST_PREFIX,
    PAST_SEQUENCE,
    PRESENT_SEQUENCE,
    TREE_METADATA,
    TREE_NODES,
    TREE_TOKENS,
    past_key_name,
    present_name,
)
from hydra_runtime.tree import TreeBuffers

from ..base_model import BaseModel
from ..heads import DraftHeads
from .flat_decoder import FlatDecoder
from .graphs import EngineGraph
from .layer_stamp import LayerTemplate

SAMPLE_PAST = 5  # sample lengths used for tracing; the exported dims stay dynamic
SAMPLE_NEW_TOKENS = 3


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    sample_inputs: tuple[torch.Tensor, ...]
    dynamic_dims: dict[str, dict[int, str]]  # input or output name -> {axis: symbolic dim name}
    dim_ranges: dict[str, tuple[int, int]]  # symbolic dim -> (min, max) for tracing
    metadata: dict[str, str]  # the engine's metadata_props (what it bakes in, for the runtime's checks)
    layer_template: LayerTemplate | None = None  # traced once and stamped at every matching layer


def kv_names(prefix_fn, layers: int) -> tuple[str, ...]:
    return tuple(prefix_fn(layer, part) for layer in range(layers) for part in ("key", "value"))


def build_engine_spec(base: BaseModel, heads: DraftHeads, tree: TreeBuffers, max_seq_len: int,
                      dtype: torch.dtype) -> GraphSpec:
    """The one engine graph (see EngineGraph) over ``base`` and ``heads`` with ``tree`` baked in."""
    # Rotary tables cover every position a call can touch: unaccepted path rows reach past max_seq_len.
    decoder = FlatDecoder(base, max_seq_len + tree.path_length, dtype).eval()
    layers = decoder.num_layers + (1 if heads.has_context_layer else 0)
    kv_shape = (1, SAMPLE_PAST, decoder.num_kv_heads, decoder.head_dim)
    vocab = base.config.vocab_size
    controls = (torch.tensor(0.7), torch.rand(tree.num_verified))  # temperature [], random_uniforms [V]
    return GraphSpec(
        name=ENGINE_GRAPH,
        module=EngineGraph(decoder, heads, tree).eval(),
        input_names=(*HOST_INPUTS, *kv_names(past_key_name, layers)),
        output_names=(*HOST_OUTPUTS, *kv_names(present_name, layers)),
        sample_inputs=(torch.randint(0, vocab, (SAMPLE_NEW_TOKENS,)), torch.randint(0, vocab, (tree.num_nodes,)),
                       torch.randint(0, vocab, (tree.copy_nodes,)), *controls,
                       *(torch.randn(kv_shape, dtype=dtype) for _ in range(2 * layers))),
        dynamic_dims={INPUT_IDS: {0: NEW_TOKENS}, TREE_TOKENS: {0: TREE_NODES}, NEXT_TREE_TOKENS: {0: TREE_NODES}}
        | ({COPY_TOKENS: {0: COPY_NODES}} if tree.copy_nodes else {})  # without a chain: a static [0]
        | {name: {1: PAST_SEQUENCE} for name in kv_names(past_key_name, layers)}
        | {name: {1: PRESENT_SEQUENCE} for name in kv_names(present_name, layers)},
        dim_ranges={NEW_TOKENS: (0, max_seq_len), TREE_NODES: (1, tree.num_nodes),
                    COPY_NODES: (0, tree.copy_nodes), PAST_SEQUENCE: (0, max_seq_len + tree.path_length)},
        metadata={TREE_METADATA: json.dumps(tree.choices_as_lists()), COPY_NODES_METADATA: str(tree.copy_nodes),
                  MAX_SEQ_LEN_METADATA: str(max_seq_len)},
        layer_template=LayerTemplate(decoder.model.layers[0], (decoder.num_heads, decoder.num_kv_heads,
                                                              decoder.head_dim)),
    )


class TorchEngine:
    """Runs a graph's module eagerly behind the runtime's Engine interface (for checks and tests)."""

    def __init__(self, spec: GraphSpec):
        self.spec = spec
        self.input_names = spec.input_names
        self.output_names = spec.output_names

    @torch.no_grad()
    def run(self, feeds):
        """numpy in, numpy out. K/V feeds are cast to the module's dtype; bf16 outputs, which numpy
        cannot hold, come back as float32 (exact: bf16 -> fp32 -> bf16 round-trips)."""
        dtype = next(self.spec.module.parameters()).dtype
        args = [torch.from_numpy(feeds[name].copy()) for name in self.input_names]
        args = [arg.to(dtype) if name.startswith(PAST_PREFIX) else arg for name, arg in zip(self.input_names, args)]
        outputs = self.spec.module(*args)
        return {name: as_numpy(value) for name, value in zip(self.output_names, outputs)}


def as_numpy(value: torch.Tensor):
    """A tensor on the host as numpy; bf16, which numpy cannot hold, as float32 (exact)."""
    return (value.float() if value.dtype == torch.bfloat16 else value).cpu().numpy()
