"""The artifact's graphs: which module, which named inputs/outputs, which dims are dynamic."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hydra_runtime.engine import PAST_SEQUENCE, past_key_name, present_name
from hydra_runtime.tree import TreeBuffers

from ..base_model import BaseModel
from ..heads import DraftHeads
from .flat_decoder import FlatDecoder
from .graphs import SAMPLING_INPUTS, PrefillGraph, StepGraph

SAMPLE_PAST = 5  # sample lengths used for tracing; the exported dims stay dynamic
SAMPLE_PROMPT = 7


@dataclass(frozen=True)
class GraphSpec:
    name: str  # "prefill" | "step" | "decode"
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    sample_inputs: tuple[torch.Tensor, ...]
    dynamic_dims: dict[str, dict[int, str]]  # input or output name -> {axis: symbolic dim name}


def kv_names(prefix_fn, layers: int) -> tuple[str, ...]:
    return tuple(prefix_fn(layer, part) for layer in range(layers) for part in ("key", "value"))


def sampling_samples() -> tuple[torch.Tensor, ...]:
    """temperature, posterior_threshold, posterior_alpha, random_uniform (float32 scalars)."""
    return tuple(torch.tensor(value) for value in (0.7, 0.09, 0.3, 0.5))


def build_graph_specs(
    base: BaseModel, heads: DraftHeads, tree: TreeBuffers, max_seq_len: int, dtype: torch.dtype,
    sampling: bool = False,
) -> list[GraphSpec]:
    """prefill, step and decode graphs; with ``sampling``, also their *_sample variants."""
    decoder = FlatDecoder(base, max_seq_len, dtype).eval()
    specs = []
    for sample in (False, True) if sampling else (False,):
        specs += _graph_family(base, decoder, heads, tree, dtype, sample)
    return specs


def _graph_family(base, decoder: FlatDecoder, heads: DraftHeads, tree: TreeBuffers, dtype, sampling: bool):
    suffix = "_sample" if sampling else ""
    controls = SAMPLING_INPUTS if sampling else ()
    control_samples = sampling_samples() if sampling else ()
    base_layers = decoder.num_layers
    spec_layers = base_layers + (1 if heads.has_context_layer else 0)
    kv_shape = (1, SAMPLE_PAST, decoder.num_kv_heads, decoder.head_dim)

    def past_samples(layers):
        return tuple(torch.randn(kv_shape, dtype=dtype) for _ in range(2 * layers))

    def past_dims(layers):
        return {name: {1: PAST_SEQUENCE} for name in kv_names(past_key_name, layers)}

    prefill = GraphSpec(
        name="prefill" + suffix,
        module=PrefillGraph(decoder, heads, tree, sampling).eval(),
        input_names=("input_ids", *controls),
        output_names=("tree_tokens", *kv_names(present_name, spec_layers)),
        sample_inputs=(torch.randint(0, base.config.vocab_size, (SAMPLE_PROMPT,)), *control_samples),
        dynamic_dims={"input_ids": {0: "prompt_sequence"}}
        | {name: {1: "prompt_sequence"} for name in kv_names(present_name, spec_layers)},
    )
    step_outputs = ("next_tree_tokens", "accepted_nodes", "accepted_count")
    step = GraphSpec(
        name="step" + suffix,
        module=StepGraph(decoder, heads, tree, sampling).eval(),
        input_names=("tree_tokens", *controls, *kv_names(past_key_name, spec_layers)),
        output_names=(*step_outputs, *kv_names(present_name, spec_layers)),
        sample_inputs=(torch.randint(0, base.config.vocab_size, (tree.num_nodes,)), *control_samples,
                       *past_samples(spec_layers)),
        dynamic_dims=past_dims(spec_layers),
    )
    root_only = TreeBuffers.from_choices([])
    decode = GraphSpec(
        name="decode" + suffix,
        module=StepGraph(decoder, None, root_only, sampling).eval(),
        input_names=("tree_tokens", *controls, *kv_names(past_key_name, base_layers)),
        output_names=(*step_outputs, *kv_names(present_name, base_layers)),
        sample_inputs=(torch.randint(0, base.config.vocab_size, (1,)), *control_samples, *past_samples(base_layers)),
        dynamic_dims=past_dims(base_layers),
    )
    return [prefill, step, decode]


class TorchEngine:
    """Runs a graph's module eagerly behind the runtime's Engine interface (for checks and tests)."""

    def __init__(self, spec: GraphSpec):
        self.spec = spec
        self.input_names = spec.input_names
        self.output_names = spec.output_names

    @torch.no_grad()
    def run(self, feeds):
        args = [torch.from_numpy(feeds[name].copy()) for name in self.input_names]
        outputs = self.spec.module(*args)
        return {name: value.numpy() for name, value in zip(self.output_names, outputs)}
