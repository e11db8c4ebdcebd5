"""The modules traced into the artifact's graphs.

- PrefillGraph: prompt -> its K/V and the first draft tree (root = the base model's token).
- StepGraph: one whole decode step in one engine call: verify the tree, accept the
  longest agreeing path (greedy), gather the accepted K/V rows, run the context layer
  (Hydra++), and draft the next tree. Only token ids, a count and D+1 K/V rows per layer
  leave the engine; no vocab-sized tensor does.
- With an empty tree and no heads, StepGraph is the plain autoregressive decode step
  (the baseline the runtime compares against).

Every tree constant (mask, depths, paths, expansion plan) is a buffer, hence a graph
constant. N = tree nodes, D = tree depth, P = cached positions, kv/d = KV heads/head dim.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hydra_runtime.tree import TreeBuffers

from ..heads import BaseProjections, DraftHeads
from .flat_decoder import FlatDecoder, additive_bias, decoder_layer


def _const(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array))


def causal_bias(length: int | torch.Tensor, past: int | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[T, P + T]: row i sees every past position and new positions <= i."""
    rows = torch.arange(length)[:, None]
    cols = torch.arange(past + length)[None, :] - past
    return additive_bias(cols <= rows, dtype)


class TreeDrafter(nn.Module):
    """Drafts a whole tree from the root token and the heads' context (one head call per depth)."""

    def __init__(self, heads: DraftHeads | None, tree: TreeBuffers, projections: BaseProjections):
        super().__init__()
        self.heads = heads
        self.projections = projections
        self.plans = [
            (
                plan.depth,
                plan.top_k,
                f"path_{plan.depth}",
                f"pick_{plan.depth}",
            )
            for plan in tree.depth_plans
        ]
        for plan in tree.depth_plans:
            # Node indices root..parent of every parent at this depth: [n_parents, depth].
            self.register_buffer(f"path_{plan.depth}", _const(tree.ancestors[plan.parent_nodes, : plan.depth]))
            # Where each child sits in the flattened [n_parents * top_k] candidates.
            self.register_buffer(f"pick_{plan.depth}", _const(plan.child_parent_slot * plan.top_k + plan.child_rank))

    def forward(self, root: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """root [1] int64, context [H] -> tree tokens [N] in node order."""
        tokens = root
        for depth, top_k, path_name, pick_name in self.plans:
            path_tokens = tokens[getattr(self, path_name)]  # [n_parents, depth]
            parents = path_tokens.shape[0]
            logits = self.heads.draft_logits(depth - 1, context.expand(parents, -1), path_tokens, self.projections)
            top = torch.topk(logits, top_k, dim=-1).indices  # [n_parents, top_k]
            tokens = torch.cat([tokens, top.reshape(-1)[getattr(self, pick_name)]])
        return tokens


class ContextLayer(nn.Module):
    """Hydra++'s extra decoder layer + norm over base hidden states, on the flat KV layout."""

    def __init__(self, heads: DraftHeads, decoder: FlatDecoder):
        super().__init__()
        self.layer = heads.prefix_layer
        self.norm = heads.prefix_norm
        self.rotary = decoder.rotary
        self.shape = (decoder.num_heads, decoder.num_kv_heads, decoder.head_dim)

    def forward(self, hidden, positions, past_key, past_value, bias):
        """hidden [T, H], positions [T], past [1, P, kv, d], bias [T, P + T] -> [T, H], key, value."""
        out, key, value = decoder_layer(self.layer, hidden, self.rotary(positions), past_key, past_value, bias, *self.shape)
        return self.norm(out), key, value


class PrefillGraph(nn.Module):
    def __init__(self, decoder: FlatDecoder, heads: DraftHeads | None, tree: TreeBuffers):
        super().__init__()
        self.decoder = decoder
        self.drafter = TreeDrafter(heads, tree, BaseProjections(decoder.embed_tokens, decoder.lm_head))
        self.context_layer = ContextLayer(heads, decoder) if heads is not None and heads.has_context_layer else None
        self.kv_shape = (1, 0, decoder.num_kv_heads, decoder.head_dim)

    def forward(self, input_ids: torch.Tensor):
        """input_ids [T] -> tree_tokens [N], present K/V [1, T, kv, d] per layer (context layer last)."""
        t = input_ids.shape[0]
        dtype = self.decoder.rotary.cos.dtype
        empty = torch.zeros(self.kv_shape, dtype=dtype)
        bias = causal_bias(t, 0, dtype)
        positions = torch.arange(t)
        hidden, present = self.decoder(input_ids, positions, [empty] * (2 * self.decoder.num_layers), bias)
        root = torch.argmax(self.decoder.lm_head(hidden[-1:]), dim=-1)  # [1]
        context = hidden[-1]
        if self.context_layer is not None:
            out, key, value = self.context_layer(hidden, positions, empty, empty, bias)
            context = out[-1]
            present = [*present, key, value]
        return (self.drafter(root, context), *present)


class StepGraph(nn.Module):
    def __init__(self, decoder: FlatDecoder, heads: DraftHeads | None, tree: TreeBuffers):
        super().__init__()
        dtype = decoder.rotary.cos.dtype
        self.decoder = decoder
        self.drafter = TreeDrafter(heads, tree, BaseProjections(decoder.embed_tokens, decoder.lm_head))
        self.context_layer = ContextLayer(heads, decoder) if heads is not None and heads.has_context_layer else None
        self.num_base_kv = 2 * decoder.num_layers
        self.path_length = tree.max_depth + 1
        paths = tree.retrieve_paths
        self.register_buffer("depths", _const(tree.depths))  # [N]
        self.register_buffer("tree_bias", additive_bias(_const(tree.attention_mask), dtype))  # [N, N]
        self.register_buffer("parents", _const(np.maximum(tree.parents, 0)))  # [N], root -> itself
        self.register_buffer("is_root", _const(np.arange(tree.num_nodes) == 0))  # [N]
        self.register_buffer("paths", _const(np.maximum(paths, 0)))  # [L, D+1], padding -> root
        self.register_buffer("path_children", _const(np.maximum(paths[:, 1:], 0)))  # [L, D]
        self.register_buffer("path_present", _const(paths[:, 1:] >= 0))  # [L, D]
        self.register_buffer("path_offsets", torch.arange(self.path_length))  # [D+1]

    def forward(self, tree_tokens: torch.Tensor, *past: torch.Tensor):
        """tree_tokens [N]; past: K/V [1, P, kv, d] per layer (context layer last).

        Returns next_tree_tokens [N], accepted_nodes [D+1] (valid up to accepted_count),
        accepted_count [] (>= 1), and per layer the K/V rows of accepted_nodes [1, D+1, kv, d].
        """
        base_past = list(past[: self.num_base_kv])
        p = base_past[0].shape[1]
        n = tree_tokens.shape[0]
        bias = torch.cat([torch.zeros(n, p, dtype=self.tree_bias.dtype), self.tree_bias], dim=1)  # [N, P+N]
        hidden, present = self.decoder(tree_tokens, p + self.depths, base_past, bias)  # [N, H]
        predictions = torch.argmax(self.decoder.lm_head(hidden), dim=-1)  # [N]

        # Greedy acceptance: a node is accepted when it equals its parent's prediction.
        node_ok = (tree_tokens == predictions[self.parents]) | self.is_root  # [N]
        child_ok = node_ok[self.path_children] & self.path_present  # [L, D]
        misses = torch.cumsum((~child_ok).to(torch.int64), dim=1)  # [L, D]
        lengths = (misses == 0).to(torch.int64).sum(dim=1)  # [L] accepted drafts per path
        best = torch.argmax(lengths)  # first longest path
        count = lengths[best] + 1  # root included
        path = self.paths[best]  # [D+1]
        last = path[count - 1]
        root = predictions[last].reshape(1)

        accepted = [kv[:, path] for kv in present]  # [1, D+1, kv, d] each
        context = hidden[last]
        if self.context_layer is not None:
            positions = p + self.path_offsets
            out, key, value = self.context_layer(
                hidden[path], positions, past[-2], past[-1], causal_bias(self.path_length, p, hidden.dtype)
            )
            context = out[count - 1]
            accepted += [key, value]
        return (self.drafter(root, context), path, count, *accepted)
