"""The interface shared by Medusa, Hydra and Hydra++ heads.

Vocabulary: at a decoding step the base model has accepted tokens up to position t.
``context`` is what the heads condition on at t (the base model's last hidden state,
or for Hydra++ the output of an extra decoder layer over all base hidden states).
The *root* is the base model's own next token x[t+1]. Head k (0-based) predicts
x[t+2+k]; sequential heads also see the embeddings of root..x[t+1+k], the path of
tokens speculated before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import HeadsConfig
from .residual_block import ResidualBlock


@dataclass(frozen=True)
class BaseProjections:
    """The base model's token embedding and LM head, passed to the heads explicitly."""

    embed_tokens: nn.Embedding
    lm_head: nn.Linear


class DraftHeads(nn.Module):
    """Base class: residual-MLP heads, optionally sequential, optionally with own LM heads."""

    kind: str = ""
    sequential: bool = False  # True: head k also sees the k+1 tokens speculated before it
    has_context_layer: bool = False  # True: context() runs a decoder layer with its own KV cache

    def __init__(self, config: HeadsConfig, base_config):
        super().__init__()
        self.config = config
        self.mlps = nn.ModuleList(self._head_mlp(k) for k in range(config.num_heads))
        self.lm_heads = (
            nn.ModuleList(
                nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
                for _ in range(config.num_heads)
            )
            if config.own_lm_head
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        if config.draft_vocab_size > 0:
            self.register_buffer("draft_vocab", torch.arange(config.draft_vocab_size))  # [V'] token ids
        else:
            self.draft_vocab = None

    def head_input_width(self, k: int) -> int:
        hidden = self.config.hidden_size
        return hidden * (k + 2) if self.sequential else hidden

    def _head_mlp(self, k: int) -> nn.ModuleList:
        hidden, n = self.config.hidden_size, self.config.num_layers
        first = ResidualBlock(self.head_input_width(k), hidden)
        if not self.config.shared_blocks:
            rest = [ResidualBlock(hidden, hidden) for _ in range(n - 1)]
        elif self.head_input_width(k) == hidden:
            rest = [first] * (n - 1)  # deliberate: the reference shares all blocks of a head
        else:
            shared = ResidualBlock(hidden, hidden)
            rest = [shared] * (n - 1)  # deliberate: the reference shares the blocks after the first
        return nn.ModuleList([first, *rest])

    # --- context -----------------------------------------------------------------
    def new_context_cache(self):
        """Per-sequence state of context(); None for heads without a context layer."""
        return None

    def context(self, hidden: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
        """[1, T, H] base hidden states of newly accepted tokens -> [1, T, H] head context."""
        return hidden

    # --- drafting ----------------------------------------------------------------
    def head_hidden(self, k: int, context: torch.Tensor, path_embeds: torch.Tensor) -> torch.Tensor:
        """Head k's hidden state. context [B, H]; path_embeds [B, k+1, H] -> [B, H]."""
        x = context
        if self.sequential:
            x = torch.cat([context, path_embeds.flatten(1)], dim=-1)  # [B, H * (k+2)]
        for block in self.mlps[k]:
            x = block(self.dropout(x))
        return x

    def project(self, k: int, hidden: torch.Tensor, base: BaseProjections) -> torch.Tensor:
        """[B, H] -> [B, V] logits with head k's own LM head or the base model's."""
        lm_head = self.lm_heads[k] if self.lm_heads is not None else base.lm_head
        return lm_head(self.dropout(hidden))

    def draft_logits(
        self, k: int, context: torch.Tensor, path_tokens: torch.Tensor, base: BaseProjections
    ) -> torch.Tensor:
        """Logits of head k over the whole vocabulary. context [B, H]; path_tokens [B, k+1] (root first) -> [B, V]."""
        path_embeds = base.embed_tokens(path_tokens)  # [B, k+1, H]
        return self.project(k, self.head_hidden(k, context, path_embeds), base)

    def draft_candidates(
        self, k: int, context: torch.Tensor, path_tokens: torch.Tensor, base: BaseProjections, top_k: int
    ) -> torch.Tensor:
        """Head k's top_k token ids, best first: [B, top_k]. Only the draft vocabulary is scored, if any."""
        # TopK on float32: ONNX's TopK has no bfloat16 kernel type, and the slice is small.
        if self.draft_vocab is None:
            return torch.topk(self.draft_logits(k, context, path_tokens, base).float(), top_k, dim=-1).indices
        hidden = self.head_hidden(k, context, base.embed_tokens(path_tokens))  # [B, H]
        lm_head = self.lm_heads[k] if self.lm_heads is not None else base.lm_head
        # index_select, not weight[vocab]: it exports as one Gather on the vocab buffer, which every
        # depth shares (CSE merges them), so ONNX Runtime folds and prepacks the [V', H] table once.
        bias = lm_head.bias.index_select(0, self.draft_vocab) if lm_head.bias is not None else None
        logits = nn.functional.linear(hidden, lm_head.weight.index_select(0, self.draft_vocab), bias)  # [B, V']
        return self.draft_vocab[torch.topk(logits.float(), top_k, dim=-1).indices]
