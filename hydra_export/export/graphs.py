"""The module traced into the artifact's one engine graph (EngineGraph).

One call per decode step: append causal tokens (the prompt at prefill), a prefix of the
static tree and of its copy chain, verify them, accept the longest agreeing path (greedy, or
speculative sampling when temperature > 0), gather the accepted K/V rows, run the context layer
(Hydra++), and draft the next tree. Only token ids, a count and the accepted K/V rows leave
the engine; no vocab-sized tensor does. Greedy and sampling, drafting or not, are chosen by
inputs (both acceptance rules are computed and one selected: torch.cond does not export here).

Every tree constant (mask, depths, paths, expansion plan) is a buffer, hence a graph
constant. N = drafted tree nodes, C = copy-chain nodes, V = N + C, D = drafted depth,
W = max(D, C) + 1 (longest path), P = cached positions, kv/d = KV heads/head dim.
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


def sample_token(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """probs [V] (unnormalised) -> [1]: the first index whose cumulative probability reaches
    ``uniform`` of the total (sampling.inverse_cdf)."""
    cdf = torch.cumsum(probs, dim=-1)
    index = (cdf < uniform * cdf[-1]).float().sum().to(torch.int64)  # float sum: no int64 reductions on GPUs
    return torch.clamp(index, max=probs.shape[-1] - 1).reshape(1)


def without_tokens(probs: torch.Tensor, tokens: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """probs [V] with probs[tokens[i]] = 0 where removed[i] (tokens, removed: [m])."""
    vocab = probs.shape[0]
    slots = torch.where(removed, tokens, vocab)  # the others write to a spare slot, cut off after
    padded = torch.cat([probs, probs.new_zeros(1)])
    return padded.index_put((slots,), probs.new_zeros(tokens.shape[0]))[:vocab]


def speculative_sampling_ok(probs: torch.Tensor, drafts: torch.Tensor, parent_rows: torch.Tensor,
                            uniforms: torch.Tensor) -> torch.Tensor:
    """hydra_runtime.acceptance.speculative_sampling_ok over the verified rows: probs [m, V] (each
    row's next-token distribution at the temperature), drafts, parent_rows, uniforms [m] -> accepted
    [m] (root's True)."""
    m = drafts.shape[0]
    probs = probs[parent_rows, drafts]  # [m]: P(draft | parent)
    rows = torch.arange(m)
    earlier_sibling = ((parent_rows[:, None] == parent_rows[None, :]) & (rows[None, :] < rows[:, None])
                       & (rows[None, :] > 0)).float()  # [m, m]: j is an earlier child of i's parent
    repeated = (earlier_sibling * (drafts[:, None] == drafts[None, :]).float()).sum(dim=1) > 0
    probs = torch.where(repeated, 0.0, probs)  # a token tried already has no probability left
    left = 1 - (earlier_sibling * probs[None, :]).sum(dim=1)  # [m]
    taken = (probs > 0) & (uniforms * left < probs)
    passed_over = (earlier_sibling * taken.float()[None, :]).sum(dim=1) > 0  # an earlier sibling was taken
    return (taken & ~passed_over) | (rows == 0)


class TreeDrafter(nn.Module):
    """Drafts a whole tree from the root token and the heads' context (one head call per depth)."""

    def __init__(self, heads: DraftHeads, tree: TreeBuffers, projections: BaseProjections):
        super().__init__()
        self.heads = heads
        self.projections = projections
        self.depth_plans = tree.depth_plans
        for plan in tree.depth_plans:
            # Node indices root..parent of every parent at this depth: [n_parents, depth].
            self.register_buffer(f"path_{plan.depth}", _const(tree.ancestors[plan.parent_nodes, : plan.depth]))
            # Where each child sits in the flattened [n_parents * top_k] candidates.
            self.register_buffer(f"pick_{plan.depth}", _const(plan.child_parent_slot * plan.top_k + plan.child_rank))

    def forward(self, root: torch.Tensor, context: torch.Tensor, nodes) -> torch.Tensor:
        """root [1] int64, context [H] -> the first ``nodes`` tree tokens [nodes] in node order.

        Heads run only on the parents of those nodes (children are ordered by parent slot, so
        the first c children of a depth need at most its first c parents): a one-node tree
        (the autoregressive step) runs no head at all.
        """
        tokens = root
        for plan in self.depth_plans:
            children = torch.sym_max(0, torch.sym_min(nodes - plan.child_start, plan.child_stop - plan.child_start))
            parents = torch.sym_min(children, len(plan.parent_nodes))
            path_tokens = tokens[getattr(self, f"path_{plan.depth}")[:parents]]  # [parents, depth]
            top = self.heads.draft_candidates(
                plan.depth - 1, context.expand(parents, -1), path_tokens, self.projections, plan.top_k
            )  # [parents, top_k]
            tokens = torch.cat([tokens, top.reshape(-1)[getattr(self, f"pick_{plan.depth}")[:children]]])
        return tokens


class ContextLayer(nn.Module):
    """Hydra++'s extra decoder layer + norm over base hidden states, on the flat KV layout.

    Only one row's output feeds the drafter (the last accepted one), so every row gets its key
    and value but only that row runs attention and the MLP. Traced in full: it is not the
    stamped layer (layer_stamp) since its call differs.
    """

    def __init__(self, heads: DraftHeads, decoder: FlatDecoder):
        super().__init__()
        self.layer = heads.prefix_layer
        self.norm = heads.prefix_norm
        self.rotary = decoder.rotary
        self.shape = (decoder.num_heads, decoder.num_kv_heads, decoder.head_dim)

    def forward(self, hidden, positions, past_key, past_value, query, query_position):
        """hidden [R, H] at positions [R] (each row sees the past and the rows before it), past
        [1, P, kv, d], query [1, H] at query_position [1] (it sees the past and the rows at
        earlier or equal positions) -> the query's output [1, H], key, value [1, R, kv, d]."""
        p = past_key.shape[1]
        visible = (p + torch.arange(hidden.shape[0]))[None, :] <= query_position[:, None]  # [1, R]
        bias = additive_bias(torch.cat([torch.ones(1, p, dtype=torch.bool), visible], dim=1), hidden.dtype)
        out, key, value = decoder_layer(self.layer, hidden, self.rotary(positions), past_key, past_value, bias,
                                        *self.shape, query=(query, self.rotary(query_position)))
        return self.norm(out), key, value


class EngineGraph(nn.Module):
    """The artifact's one engine: prefill, the tree step and the autoregressive step in one graph.

    A call appends ``T >= 0`` causal tokens (``input_ids``: the prompt but its last token at
    prefill, none in steady state), the first ``n`` nodes of the static tree (``tree_tokens``,
    1 <= n <= N; nodes are stored parents-first, so a prefix is a valid tree) and the first
    ``c`` nodes of its copy chain (``copy_tokens``, 0 <= c <= C, chosen by the runtime) to the
    cached sequence, verifies them, accepts the longest agreeing path, and drafts the first n
    nodes of the next tree. n = 1 is the autoregressive step (no head runs); smaller n and c
    serve the end of the context. While causal tokens are given (the prefill) only the root is
    verified: the other n - 1 nodes only size the next draft.

    The n + c verified nodes are laid out as rows: tree_tokens, then copy_tokens. ``nodes`` maps
    each row to its node in the static tree buffers, ``rows_of`` maps back (absent nodes -> row 0).

    Inputs: input_ids [T], tree_tokens [n], copy_tokens [c], temperature [] (0: greedy; > 0:
    speculative sampling, distributed as the base model's sampling), random_uniforms [V] (row r's
    acceptance draw; row 0's for the token after the path), past K/V [1, P, kv, d] per layer
    (context layer last).
    Outputs: next_tree_tokens [n], accepted_nodes [W] (rows of tree_tokens ++ copy_tokens,
    root first, valid up to accepted_count), accepted_count [] (>= 1), and per layer K/V
    [1, T+W, kv, d]: the T causal rows, then the rows of accepted_nodes. The runtime keeps
    T + accepted_count of them. W = max(D, C) + 1, the longest path.
    """

    def __init__(self, decoder: FlatDecoder, heads: DraftHeads, tree: TreeBuffers):
        super().__init__()
        dtype = decoder.rotary.cos.dtype
        self.decoder = decoder
        self.drafter = TreeDrafter(heads, tree, BaseProjections(decoder.embed_tokens, decoder.lm_head))
        self.context_layer = ContextLayer(heads, decoder) if heads.has_context_layer else None
        self.num_base_kv = 2 * decoder.num_layers
        self.num_nodes = tree.num_nodes
        self.copy_nodes = tree.copy_nodes
        self.path_length = tree.path_length
        paths = tree.retrieve_paths
        self.register_buffer("copy_index", torch.arange(tree.num_nodes, tree.num_verified))  # [C] node of each chain row
        self.register_buffer("depths", _const(tree.depths))  # [V]
        self.register_buffer("tree_bias", additive_bias(_const(tree.attention_mask), dtype))  # [V, V]
        self.register_buffer("parents", _const(np.maximum(tree.parents, 0)))  # [V], root -> itself
        self.register_buffer("paths", _const(np.maximum(paths, 0)))  # [L, W], padding -> root
        self.register_buffer("path_children", _const(np.maximum(paths[:, 1:], 0)))  # [L, W-1]
        self.register_buffer("path_present", _const(paths[:, 1:] >= 0))  # [L, W-1]
        self.register_buffer("path_offsets", torch.arange(self.path_length))  # [W]

    def forward(self, input_ids, tree_tokens, copy_tokens, temperature, random_uniforms, *past):
        base_past = list(past[: self.num_base_kv])
        p = base_past[0].shape[1]
        t = input_ids.shape[0]
        n = tree_tokens.shape[0]
        c = copy_tokens.shape[0]
        nodes = torch.cat([torch.arange(n), self.copy_index[:c]])  # [n+c] static node of each row
        zeros = torch.zeros(self.num_nodes - n, dtype=torch.int64)
        rows_of = torch.cat([torch.arange(n), zeros, n + torch.arange(c),
                             torch.zeros(self.copy_nodes - c, dtype=torch.int64)])  # [V] row of each node
        present_nodes = torch.cat([torch.ones(n, dtype=torch.bool), zeros.bool(), torch.ones(c, dtype=torch.bool),
                                   torch.zeros(self.copy_nodes - c, dtype=torch.bool)])  # [V]
        drafts = torch.cat([tree_tokens, copy_tokens])  # [n+c]
        positions = torch.cat([p + torch.arange(t), p + t + self.depths[nodes]])  # [T+n+c]
        hidden, present = self.decoder(torch.cat([input_ids, drafts]), positions, base_past,
                                       self._bias(p, t, nodes))  # [T+n+c, H]
        logits = self.decoder.lm_head(hidden[t:])  # [n+c, V]: the verified rows only
        parent_rows = rows_of[self.parents[nodes]]  # [n+c], the root -> itself
        # Both rules are computed and one is selected (no control flow in the graph; sampling's
        # normaliser over the verified rows is small beside the forward pass).
        sampling = temperature > 0
        greedy_ok = drafts == torch.argmax(logits, dim=-1)[parent_rows]  # [n+c]
        # Softmax, not exp(x - logsumexp): ONNX Runtime's ReduceLogSumExp took 3.4 ms over 20 rows.
        probs = torch.softmax(logits.float() / temperature.clamp(min=1e-4), dim=-1)  # [n+c, vocab]
        sampled_ok = speculative_sampling_ok(probs, drafts, parent_rows, random_uniforms[: n + c])  # [n+c]
        verifying = torch.ones_like(input_ids).sum() == 0  # False at prefill: only the root counts
        chosen_ok = (sampling & sampled_ok) | (~sampling & greedy_ok)  # Where has no bool kernel in ORT
        row_ok = (chosen_ok & verifying) | (torch.arange(n + c) == 0)  # [n+c]
        node_ok = row_ok[rows_of] & present_nodes  # [V]: absent nodes fail
        child_ok = node_ok[self.path_children] & self.path_present  # [L, W-1]
        # Longest run of accepted children from the root, in float (no int64 CumSum/ArgMax on GPUs).
        misses = torch.cumsum((~child_ok).float(), dim=1)  # [L, W-1]
        lengths = (misses == 0).float().sum(dim=1)  # [L] accepted drafts per path
        best = torch.argmax(lengths)  # first longest path
        count = lengths[best].to(torch.int64) + 1  # root included
        # Nodes past the accepted ones -> the root (row 0), so every gather stays inside the given rows.
        path = rows_of[torch.where(self.path_offsets < count, self.paths[best], 0)]  # [W] rows
        last = path[count - 1]
        greedy_root = torch.argmax(logits[last], dim=-1).reshape(1)
        # Sampled: from what is left after the last row's children, all tried and not taken.
        tried = verifying & (parent_rows == last) & (torch.arange(n + c) > 0)  # [n+c]
        residual = without_tokens(probs[last], drafts, tried)  # [V]
        root = torch.where(sampling, sample_token(residual, random_uniforms[0]), greedy_root)  # [1]

        rows = torch.cat([torch.arange(t), t + path])  # [T+W]: causal rows, then the accepted path
        accepted = [kv[:, rows] for kv in present]  # [1, T+W, kv, d] each
        context = hidden[t + last]  # [H]
        if self.context_layer is not None:
            # Its output only feeds the drafter, and a one-node call drafts nothing (once n = 1, every
            # later call has n = 1): there it keeps no rows and its K/V rows are zeros.
            rows_kept = (t + self.path_length) * torch.sym_min(n - 1, 1)
            chosen = hidden[rows][:rows_kept]  # [rows_kept, H]
            out, key, value = self.context_layer(chosen, p + torch.arange(rows_kept), past[-2], past[-1],
                                                 context[None], (p + t + count - 1).reshape(1))
            context = out[0]
            skipped = t + self.path_length - rows_kept
            accepted += [torch.cat([kv, kv.new_zeros(1, skipped, *kv.shape[2:])], dim=1) for kv in (key, value)]
        return (self.drafter(root, context, n), path, count, *accepted)

    def _bias(self, p, t, nodes) -> torch.Tensor:
        """[T+m, P+T+m] for m = len(nodes) verified rows: causal rows see the past and earlier causal
        rows; verified rows see the past, every causal row, and their own ancestors."""
        dtype = self.tree_bias.dtype
        m = nodes.shape[0]
        causal = causal_bias(t, p, dtype)  # [T, P+T]
        blocked = torch.full((t, m), torch.finfo(dtype).min, dtype=dtype)  # causal rows never see the tree
        tree = torch.cat([torch.zeros(m, p + t, dtype=dtype), self.tree_bias[nodes][:, nodes]], dim=1)  # [m, P+T+m]
        return torch.cat([torch.cat([causal, blocked], dim=1), tree], dim=0)
