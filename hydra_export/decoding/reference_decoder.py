"""Lossless Hydra / Medusa speculative decoding in plain PyTorch (batch size 1).

One step: draft a static tree from the heads (one head call per depth, batched over
that depth's parents), verify every node in one base forward with the tree-attention
mask, accept the longest path the base model agrees with, keep the accepted KV
entries, and continue from the base model's own token after the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from hydra_runtime.acceptance import greedy_node_ok, longest_accepted_path, typical_node_ok, typical_thresholds
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

    def _choose(self, tokens, logits, sampling: SamplingConfig, rng) -> tuple[np.ndarray, int]:
        """Accepted node indices [m+1] and the base model's token after the last of them."""
        n = tokens.shape[0]
        parents = self.tree.parents[:n]
        tokens_np = tokens.numpy()
        if sampling.temperature <= 0:
            predictions = logits.argmax(dim=-1).numpy()
            accepted = longest_accepted_path(self.tree.retrieve_paths, greedy_node_ok(tokens_np, predictions, parents))
            return accepted, int(predictions[accepted[-1]])
        probs = torch.softmax(logits.double() / sampling.temperature, dim=-1)  # [n, V]
        probs_np = probs.numpy()
        candidate = probs_np[np.maximum(parents, 0), tokens_np]
        thresholds = typical_thresholds(probs_np, sampling.posterior_threshold, sampling.posterior_alpha)
        accepted = longest_accepted_path(
            self.tree.retrieve_paths, typical_node_ok(tokens_np, candidate, thresholds, parents)
        )
        return accepted, inverse_cdf(probs_np[accepted[-1]], rng.random())

    def _first_token(self, logits, sampling: SamplingConfig, rng) -> int:
        if sampling.temperature <= 0:
            return int(logits.argmax())
        return inverse_cdf(torch.softmax(logits.double() / sampling.temperature, dim=-1).numpy(), rng.random())

    @torch.no_grad()
    def generate(
        self,
        input_ids: list[int],
        max_new_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
    ) -> ReferenceResult:
        """Greedy (lossless) or, with ``sampling.temperature`` > 0, typical acceptance seeded by ``seed``."""
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
        rng = np.random.default_rng(seed)  # one draw per sampled root, in the engines' order
        root = self._first_token(lm_head(hidden[0, -1]), sampling, rng)

        result = ReferenceResult(tokens=[])
        past = prompt_length  # cached positions; the root is emitted but not yet cached
        pending = [root]
        while True:
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
            n = min(tree.num_nodes, self.max_seq_len - past)  # the first n nodes form a valid subtree
            tokens = self.draft(root, context)[:n]
            positions = torch.from_numpy(past + tree.depths[:n])[None]
            mask = tree_attention_bias(past, tree.attention_mask[:n, :n], hidden.dtype)
            hidden = decoder(
                input_ids=tokens[None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            ).last_hidden_state[0]  # [n, H]
            accepted, root = self._choose(tokens, lm_head(hidden), sampling, rng)
            accepted_t = torch.from_numpy(accepted)
            keep_accepted(cache, past, accepted_t)
            accepted_positions = torch.arange(past, past + len(accepted))[None]
            context = heads.context(hidden[accepted_t][None], accepted_positions, context_cache)[0, -1]
            past += len(accepted)
            pending = [*tokens[accepted_t[1:]].tolist(), root]
            result.accepted_lengths.append(len(pending))
