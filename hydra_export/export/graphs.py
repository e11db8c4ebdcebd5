"""The modules traced into the artifact's graphs.

- PrefillGraph: prompt -> its K/V and the first draft tree (root = the base model's token).
- StepGraph: one whole decode step in one engine call: verify the tree, accept the
  longest agreeing path (greedy), gather the accepted K/V rows, run the context layer
  (Hydra++), and draft the next tree. Only token ids, a count and D+1 K/V rows per layer
  leave the engine; no vocab-sized tensor does.
- With an empty tree and no heads, StepGraph is the plain autoregressive decode step
  (the baseline the runtime compares against).
- With ``sampling=True`` the graphs take four scalar inputs (temperature,
  posterior_threshold, posterior_alpha, random_uniform): nodes are accepted by typical
  acceptance and the root is sampled by inverse CDF (hydra_runtime.sampling), so a seeded
  engine run matches the reference decoder.

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


SAMPLING_INPUTS = ("temperature", "posterior_threshold", "posterior_alpha", "random_uniform")


def sample_token(logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """logits [V] -> [1]: the first index whose cumulative probability reaches ``uniform``."""
    cdf = torch.cumsum(torch.softmax(logits.float() / temperature, dim=-1), dim=-1)
    index = (cdf < uniform * cdf[-1]).to(torch.int64).sum()
    return torch.clamp(index, max=logits.shape[-1] - 1).reshape(1)


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
            top = self.heads.draft_candidates(
                depth - 1, context.expand(parents, -1), path_tokens, self.projections, top_k
            )  # [n_parents, top_k]
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
    def __init__(self, decoder: FlatDecoder, heads: DraftHeads | None, tree: TreeBuffers, sampling: bool = False):
        super().__init__()
        self.sampling = sampling
        self.decoder = decoder
        self.drafter = TreeDrafter(heads, tree, BaseProjections(decoder.embed_tokens, decoder.lm_head))
        self.context_layer = ContextLayer(heads, decoder) if heads is not None and heads.has_context_layer else None
        self.kv_shape = (1, 0, decoder.num_kv_heads, decoder.head_dim)

    def forward(self, input_ids: torch.Tensor, *controls: torch.Tensor):
        """input_ids [T] (+ the SAMPLING_INPUTS scalars when sampling) ->
        tree_tokens [N], present K/V [1, T, kv, d] per layer (context layer last)."""
        t = input_ids.shape[0]
        dtype = self.decoder.rotary.cos.dtype
        empty = torch.zeros(self.kv_shape, dtype=dtype)
        bias = causal_bias(t, 0, dtype)
        positions = torch.arange(t)
        hidden, present = self.decoder(input_ids, positions, [empty] * (2 * self.decoder.num_layers), bias)
        last_logits = self.decoder.lm_head(hidden[-1])  # [V]
        if self.sampling:
            temperature, _, _, uniform = controls
            root = sample_token(last_logits, temperature, uniform)
        else:
            root = torch.argmax(last_logits, dim=-1).reshape(1)
        context = hidden[-1]
        if self.context_layer is not None:
            out, key, value = self.context_layer(hidden, positions, empty, empty, bias)
            context = out[-1]
            present = [*present, key, value]
        return (self.drafter(root, context), *present)


class StepGraph(nn.Module):
    def __init__(self, decoder: FlatDecoder, heads: DraftHeads | None, tree: TreeBuffers, sampling: bool = False):
        super().__init__()
        self.sampling = sampling
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

    def forward(self, tree_tokens: torch.Tensor, *inputs: torch.Tensor):
        """tree_tokens [N] (+ the SAMPLING_INPUTS scalars when sampling); past: K/V [1, P, kv, d]
        per layer (context layer last).

        Returns next_tree_tokens [N], accepted_nodes [D+1] (valid up to accepted_count),
        accepted_count [] (>= 1), and per layer the K/V rows of accepted_nodes [1, D+1, kv, d].
        """
        controls, past = (inputs[:4], inputs[4:]) if self.sampling else ((), inputs)
        base_past = list(past[: self.num_base_kv])
        p = base_past[0].shape[1]
        n = tree_tokens.shape[0]
        bias = torch.cat([torch.zeros(n, p, dtype=self.tree_bias.dtype), self.tree_bias], dim=1)  # [N, P+N]
        hidden, present = self.decoder(tree_tokens, p + self.depths, base_past, bias)  # [N, H]
        logits = self.decoder.lm_head(hidden)  # [N, V]
        if self.sampling:
            node_ok, choose_root = self._typical_acceptance(logits, tree_tokens, *controls)
        else:
            node_ok, choose_root = self._greedy_acceptance(logits, tree_tokens)
        child_ok = node_ok[self.path_children] & self.path_present  # [L, D]
        misses = torch.cumsum((~child_ok).to(torch.int64), dim=1)  # [L, D]
        lengths = (misses == 0).to(torch.int64).sum(dim=1)  # [L] accepted drafts per path
        best = torch.argmax(lengths)  # first longest path
        count = lengths[best] + 1  # root included
        path = self.paths[best]  # [D+1]
        last = path[count - 1]
        root = choose_root(last)

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

    def _greedy_acceptance(self, logits: torch.Tensor, tree_tokens: torch.Tensor):
        """A node is accepted when it equals its parent's argmax; the root is the argmax after the path."""
        predictions = torch.argmax(logits, dim=-1)  # [N]
        node_ok = (tree_tokens == predictions[self.parents]) | self.is_root  # [N]
        return node_ok, lambda last: predictions[last].reshape(1)

    def _typical_acceptance(self, logits, tree_tokens, temperature, posterior_threshold, posterior_alpha, uniform):
        """Typical acceptance (Medusa): p(node | parent) > min(epsilon, alpha * exp(-entropy(parent)))."""
        probs = torch.softmax(logits.float() / temperature, dim=-1)  # [N, V]
        candidate = probs[self.parents, tree_tokens]  # [N]
        entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=-1)  # [N]
        threshold = torch.minimum(posterior_threshold, posterior_alpha * torch.exp(-entropy))  # [N]
        node_ok = (candidate > threshold[self.parents]) | self.is_root
        return node_ok, lambda last: sample_token(logits[last], temperature, uniform)
