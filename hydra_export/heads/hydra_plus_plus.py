"""Hydra++: an extra decoder layer over the base hidden states feeds deeper sequential heads.

The layer is the base architecture's own decoder layer (built from its config), followed
by an RMSNorm, with its own KV cache over every accepted position.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

from ..architectures import architecture_for
from .config import HeadsConfig
from .hydra import HydraHeads


class HydraPlusPlusHeads(HydraHeads):
    kind = "hydra++"
    has_context_layer = True

    def __init__(self, config: HeadsConfig, base_config):
        super().__init__(config, base_config)
        architecture = architecture_for(base_config.model_type)
        layer_config = copy.deepcopy(base_config)
        layer_config.num_hidden_layers = 1
        layer_config._attn_implementation = "sdpa"
        self.layer_config = layer_config
        self.prefix_layer = architecture.decoder_layer_class(layer_config, layer_idx=0)
        self.prefix_norm = architecture.rms_norm_class(config.hidden_size, eps=base_config.rms_norm_eps)
        self.rotary = architecture.rotary_embedding_class(config=layer_config)

    def new_context_cache(self) -> DynamicCache:
        return DynamicCache(config=self.layer_config)

    def context(self, hidden: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
        """[1, T, H] base hidden states at position_ids [1, T] -> [1, T, H], extending ``cache``."""
        past = cache.get_seq_length() if cache is not None else 0
        t = hidden.shape[1]
        # Additive causal mask over the cached positions plus the new ones: [1, 1, T, past + T].
        allowed = torch.ones(t, past + t, dtype=torch.bool, device=hidden.device).tril(diagonal=past)
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[None, None]
        out = self.prefix_layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            position_embeddings=self.rotary(hidden, position_ids),
        )
        return self.prefix_norm(out)
