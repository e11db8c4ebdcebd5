"""Heads that know the right answer, to exercise long acceptances."""

from __future__ import annotations

import torch

from hydra_export.heads import HeadsConfig
from hydra_export.heads.draft_heads import DraftHeads


class OracleHeads(DraftHeads):
    """Drafts the true greedy continuation ``sequence`` (prompt + output) at rank 0.

    The context carries the position of the last accepted token, so head k knows to
    predict sequence[t + 2 + k]. Off the true path it predicts noise. With these heads a
    correct decoder accepts the full tree depth every step; a wrong KV compaction or
    mask would make the base model disagree and the output diverge.
    """

    kind = "oracle"
    sequential = True

    def __init__(self, base_config, sequence: list[int], num_heads: int = 4):
        config = HeadsConfig("oracle", num_heads, 1, base_config.hidden_size, base_config.vocab_size)
        super().__init__(config, base_config)
        self.sequence = sequence
        self.vocab_size = base_config.vocab_size

    def context(self, hidden, position_ids, cache):
        return position_ids[..., None].to(hidden.dtype).expand_as(hidden)

    def draft_candidates(self, k, context, path_tokens, base, top_k):
        return torch.topk(self.draft_logits(k, context, path_tokens, base), top_k, dim=-1).indices

    def draft_logits(self, k, context, path_tokens, base):
        t = int(context[0, 0])
        logits = torch.rand(context.shape[0], self.vocab_size, generator=torch.Generator().manual_seed(t + 7 * k))
        truth = self.sequence[t + 1 : t + 2 + k]  # the path root..x[t+1+k] on the true continuation
        target = t + 2 + k
        for row, path in enumerate(path_tokens.tolist()):
            if path == truth and target < len(self.sequence):
                logits[row, self.sequence[target]] = 10.0
        return logits
