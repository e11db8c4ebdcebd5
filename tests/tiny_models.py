"""Tiny random base models built in code (no downloads)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hydra_export.base_model import BaseModel, wrap_model

VOCAB = 128


def tiny_llama(seed: int = 0) -> BaseModel:
    """Llama with grouped-query attention (4 query heads share 2 KV heads)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return wrap_model(LlamaForCausalLM(config), name="tiny-llama")


def tiny_qwen2(seed: int = 0) -> BaseModel:
    """Qwen2 (q/k/v biases, untied LM head)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return wrap_model(Qwen2ForCausalLM(config), name="tiny-qwen2")
