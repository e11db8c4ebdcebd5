"""KV-cache compaction after verification."""

from __future__ import annotations

import torch


def keep_accepted(cache, past_length: int, accepted_nodes: torch.Tensor) -> None:
    """Keep the cached entries of the accepted tree nodes, contiguous after ``past_length``.

    The cache holds past_length + n entries per layer ([1, kv_heads, S, head_dim]): the
    prefix plus every verified tree node. Afterwards it holds past_length + len(accepted_nodes).
    """
    index = past_length + accepted_nodes
    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys[:, :, :past_length], layer.keys[:, :, index]], dim=2)
        layer.values = torch.cat([layer.values[:, :, :past_length], layer.values[:, :, index]], dim=2)
