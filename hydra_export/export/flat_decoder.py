"""A trace-friendly forward over the base model's own modules, with a flat KV signature.

The runtime keeps one preallocated buffer per layer laid out [1, max_seq, kv_heads,
head_dim] (sequence-major, so the first P positions are a contiguous view that can be
handed to the engine without a copy). This module consumes past keys/values in that
layout and returns only the new tokens' keys/values, never the whole cache.

It calls the model's projections, norms and MLPs directly; only attention is written
out (grouped-query attention as a broadcast matmul, no repeat of K/V), because the tree
mask and the flat cache are ours. Rotary tables come from the model's own rotary module,
so every rope-scaling variant it supports is honoured.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def additive_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool -> 0 where allowed, a large negative where not (same shape)."""
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))


class RotaryTables(nn.Module):
    """cos/sin for every position up to max_seq_len, precomputed by the model's rotary module."""

    def __init__(self, rotary: nn.Module, max_seq_len: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        positions = torch.arange(max_seq_len)[None]
        probe = torch.zeros(1, max_seq_len, head_dim, dtype=torch.float32)
        cos, sin = rotary(probe, positions)  # [1, S, head_dim]
        self.register_buffer("cos", cos[0].to(dtype), persistent=False)  # [S, head_dim]
        self.register_buffer("sin", sin[0].to(dtype), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, 1, head_dim] (broadcast over heads)."""
        return self.cos[positions][:, None, :], self.sin[positions][:, None, :]


def attention_layer(
    layer: nn.Module,
    x: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    query: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention block of a Llama-like decoder layer (pre-norm, residual added).

    x [T, H]; past_key/value [1, P, kv, d]. Every row of x gets its key/value; the queries are
    x's own rows, or ``query`` = (rows [Q, H], their rotary) when only those outputs are needed.
    bias [Q, P + T] additive (Q = T by default).
    Returns the query rows [Q, H] and this block's new key/value [1, T, kv, d].
    """
    attn = layer.self_attn
    t = x.shape[0]
    h = layer.input_layernorm(x)
    k = attn.k_proj(h).view(t, num_kv_heads, head_dim)  # [T, kv, d]
    v = attn.v_proj(h).view(t, num_kv_heads, head_dim)
    cos, sin = rotary
    k = k * cos + rotate_half(k) * sin
    if query is None:
        query_x, query_h, (cos, sin) = x, h, rotary
    else:
        query_x, (cos, sin) = query
        query_h = layer.input_layernorm(query_x)
    queries = query_x.shape[0]
    q = attn.q_proj(query_h).view(queries, num_heads, head_dim)  # [Q, nh, d]
    q = q * cos + rotate_half(q) * sin
    keys = torch.cat([past_key[0], k], dim=0).permute(1, 2, 0)  # [kv, d, P+T]
    values = torch.cat([past_value[0], v], dim=0).transpose(0, 1)  # [kv, P+T, d]
    group = num_heads // num_kv_heads
    # Query heads grouped by the KV head they share: [kv, group * Q, d].
    q = q.view(queries, num_kv_heads, group, head_dim).permute(1, 2, 0, 3).reshape(
        num_kv_heads, group * queries, head_dim)
    scores = torch.matmul(q, keys) * (head_dim**-0.5)  # [kv, group * Q, P+T]
    length = keys.shape[-1]  # P+T, spelled out: a -1 cannot be inferred when T is 0
    scores = scores.view(num_kv_heads, group, queries, length) + bias  # bias broadcasts over heads
    probs = torch.softmax(scores.float(), dim=-1).to(x.dtype)
    out = torch.matmul(probs.view(num_kv_heads, group * queries, length), values)  # [kv, group * Q, d]
    out = out.view(num_kv_heads, group, queries, head_dim).permute(2, 0, 1, 3).reshape(queries, num_heads * head_dim)
    return query_x + attn.o_proj(out), k[None], v[None]


def decoder_layer(layer, x, rotary, past_key, past_value, bias, num_heads, num_kv_heads, head_dim, query=None):
    """Attention block then MLP block: x [T, H] -> the query rows [Q, H] (x's own by default; see
    attention_layer), new key/value [1, T, kv, d]."""
    x, key, value = attention_layer(layer, x, rotary, past_key, past_value, bias, num_heads, num_kv_heads, head_dim,
                                    query)
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    return x, key, value


class FlatDecoder(nn.Module):
    """The base model's decoder stack over flat past K/V. See the module docstring."""

    def __init__(self, base, max_seq_len: int, dtype: torch.dtype):
        super().__init__()
        config = base.config
        self.model = base.decoder
        self.lm_head = base.lm_head
        self.embed_tokens = base.embed_tokens
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.rotary = RotaryTables(base.decoder.rotary_emb, max_seq_len, self.head_dim, dtype)
        self.call_layer = decoder_layer  # an opaque call while the engine is traced (layer_stamp)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: list[torch.Tensor], bias: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids, positions [T]; past: 2 * layers tensors [1, P, kv, d] (key, value, ...);
        bias [T, P + T]. Returns final-normed hidden states [T, H] and the new K/V, same order."""
        x = self.embed_tokens(input_ids)  # [T, H]
        rotary = self.rotary(positions)
        present = []
        for i, layer in enumerate(self.model.layers):
            x, key, value = self.call_layer(
                layer, x, rotary, past[2 * i], past[2 * i + 1], bias, self.num_heads, self.num_kv_heads, self.head_dim
            )
            present += [key, value]
        return self.model.norm(x), present
