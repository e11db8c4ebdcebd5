"""Lossless Hydra / Medusa speculative decoding in plain PyTorch (batch size 1).

One step: draft a static tree from the heads (one head call per depth, batched over
that depth's parents) and its copy chain from the token history (prompt lookup), verify
every node in one base forward with the tree-attention mask, accept the longest path the
base model agrees with, keep the accepted KV entries, and continue from the base model's
own token after the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from hydra_runtime.acceptance import (
    greedy_node_ok,
    longest_accepted_rows,
    parent_rows,
    residual_probs,
    speculative_sampling_ok,
)
from hydra_runtime.copy_drafts import CopyDrafts
from hydra_runtime.decode_loop import nodes_that_fit
from hydra_runtime.errors import GenerationInputError
from hydra_runtime.sampling import SamplingConfig, inverse_cdf
from hydra_runtime.tree import TreeBuffers

from ..base_model import BaseModel
from ..heads import BaseProjections, DraftHeads
from .kv_cache import keep_accepted


@dataclass
class ReferenceResult:
    tokens: list[int]  # generated ids, prompt excluded
    accepted_lengths: list[int] = field(default_factory=list)  # tokens emitted per verify step
    stop_reason: str = ""  # "eos" | "max_new_tokens" | "context"

    @property
    def mean_accepted_length(self) -> float:
        return float(np.mean(self.accepted_lengths)) if self.accepted_lengths else 0.0


def tree_attention_bias(past_length: int, tree_mask: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [1, 1, n, past + n]: every node sees the whole prefix and its own ancestors."""
    n = tree_mask.shape[0]
    allowed = torch.ones(n, past_length + n, dtype=torch.bool)
    allowed[:, past_length:] = torch.tensor(tree_mask)
    bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias[None, None]


class ReferenceDecoder:
    def __init__(self, base: BaseModel, heads: DraftHeads, tree: TreeBuffers, max_seq_len: int | None = None):
        if tree.max_depth > heads.config.num_heads:
            raise GenerationInputError(
                f"the tree is {tree.max_depth} deep but there are only {heads.config.num_heads} heads"
            )
        self.base, self.heads, self.tree = base, heads, tree
        self.max_seq_len = max_seq_len or base.max_seq_len
        self.projections = BaseProjections(base.embed_tokens, base.lm_head)

    @torch.no_grad()
    def draft(self, root: int, context: torch.Tensor) -> torch.Tensor:
        """Token of every tree node [N] from the root token and the heads' context [H]."""
        tree = self.tree
        tokens = torch.empty(tree.num_nodes, dtype=torch.long)
        tokens[0] = root
        for plan in tree.depth_plans:
            parents = len(plan.parent_nodes)
            path = tokens[torch.tensor(tree.ancestors[plan.parent_nodes, : plan.depth])]  # [P, depth]
            top = self.heads.draft_candidates(
                plan.depth - 1, context.expand(parents, -1), path, self.projections, plan.top_k
            )  # [P, top_k]
            tokens[plan.child_start : plan.child_stop] = top[torch.tensor(plan.child_parent_slot), torch.tensor(plan.child_rank)]
        return tokens

    def _choose(self, tokens, nodes: np.ndarray, logits, sampling: SamplingConfig, rng) -> tuple[np.ndarray, int]:
        """tokens [m] verified in rows, nodes [m] the tree node of each row, logits [m, vocab] ->
        the accepted rows [a+1] (root first) and the base model's token after the last of them."""
        parents = parent_rows(self.tree, nodes)
        tokens_np = tokens.numpy()
        if sampling.temperature <= 0:
            predictions = logits.argmax(dim=-1).numpy()
            rows = longest_accepted_rows(self.tree, nodes, greedy_node_ok(tokens_np, predictions, parents))
            return rows, int(predictions[rows[-1]])
        probs_np = torch.softmax(logits.double() / sampling.temperature, dim=-1).numpy()  # [m, vocab]
        uniforms = rng.random(self.tree.num_verified)  # one draw per row, as the engines take them
        ok = speculative_sampling_ok(tokens_np, probs_np[parents, tokens_np], parents, uniforms[: len(nodes)])
        rows = longest_accepted_rows(self.tree, nodes, ok)
        return rows, inverse_cdf(residual_probs(probs_np[rows[-1]], tokens_np, parents, rows[-1]), uniforms[0])

    def _first_token(self, logits, sampling: SamplingConfig, rng) -> int:
        if sampling.temperature <= 0:
            return int(logits.argmax())
        uniforms = rng.random(self.tree.num_verified)  # the engines' prefill call takes a row's worth too
        return inverse_cdf(torch.softmax(logits.double() / sampling.temperature, dim=-1).numpy(), uniforms[0])

    @torch.no_grad()
    def generate(
        self,
        input_ids: list[int],
        max_new_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
    ) -> ReferenceResult:
        """Greedy (lossless) or, with ``sampling.temperature`` > 0, speculative sampling seeded by ``seed``
        (distributed as the base model's own sampling)."""
        prompt_length = len(input_ids)
        if prompt_length == 0 or prompt_length >= self.max_seq_len:
            raise GenerationInputError(
                f"prompt has {prompt_length} tokens; it must have between 1 and {self.max_seq_len - 1} "
                "(the maximum sequence length minus one). Shorten the prompt"
            )
        decoder, lm_head, heads, tree = self.base.decoder, self.base.lm_head, self.heads, self.tree
        cache = DynamicCache(config=self.base.config)
        hidden = decoder(input_ids=torch.tensor([input_ids]), cache=cache, use_cache=True).last_hidden_state
        context_cache = heads.new_context_cache()
        context = heads.context(hidden, torch.arange(prompt_length)[None], context_cache)[0, -1]  # [H]
        rng = np.random.default_rng(seed)  # V draws per engine call, in the engines' order
        root = self._first_token(lm_head(hidden[0, -1]), sampling, rng)

        result = ReferenceResult(tokens=[])
        past = prompt_length  # cached positions; the root is emitted but not yet cached
        pending = [root]
        lookup = CopyDrafts(tree.copy_nodes, input_ids)
        while True:
            lookup.extend(pending)
            for token in pending:
                result.tokens.append(token)
                if token in eos_token_ids:
                    result.stop_reason = "eos"
                elif len(result.tokens) >= max_new_tokens:
                    result.stop_reason = "max_new_tokens"
                elif prompt_length + len(result.tokens) >= self.max_seq_len:
                    result.stop_reason = "context"  # the sequence fills the context window
                if result.stop_reason:
                    return result
            room = self.max_seq_len - 1 - past  # the deepest node that fits in the context
            n = nodes_that_fit(tree.drafted_depths, room)  # the first n nodes form a valid subtree
            copy = torch.from_numpy(lookup.propose()[:room]) if tree.copy_nodes else torch.zeros(0, dtype=torch.long)
            tokens = torch.cat([self.draft(root, context)[:n], copy])  # [n + c]
            nodes = tree.verified_nodes(n, len(copy))
            positions = torch.from_numpy(past + tree.depths[nodes])[None]
            mask = tree_attention_bias(past, tree.attention_mask[np.ix_(nodes, nodes)], hidden.dtype)
            hidden = decoder(
                input_ids=tokens[None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            ).last_hidden_state[0]  # [n + c, H]
            accepted, root = self._choose(tokens, nodes, lm_head(hidden), sampling, rng)
            accepted_t = torch.from_numpy(accepted)
            keep_accepted(cache, past, accepted_t)
            accepted_positions = torch.arange(past, past + len(accepted))[None]
            context = heads.context(hidden[accepted_t][None], accepted_positions, context_cache)[0, -1]
            past += len(accepted)
            pending = [*tokens[accepted_t[1:]].tolist(), root]
            result.accepted_lengths.append(len(pending))
