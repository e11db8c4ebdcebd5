"""A tiny Llama written as a GGUF file (float32 tensors, a word-level "llama" vocabulary), the
way llama.cpp's converter lays one out, for tests of the GGUF loading path without a download."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from hydra_export.base_model import BaseModel

_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
_LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _interleave_rotary_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k projections with each head's rotary halves interleaved; readers undo it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_llama_gguf(base: BaseModel, path: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """``base`` (a Llama with tied embeddings) as a GGUF file at ``path``; tokens are ``<t{id}>``.
    ``leave_out``: parameter names not to write (a malformed file)."""
    config = base.config
    head_dim = config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(config.vocab_size)])
    writer.add_token_scores([0.0] * config.vocab_size)
    writer.add_token_types([1] * config.vocab_size)  # normal tokens
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    for name, tensor in base.model.state_dict().items():
        if name == "lm_head.weight" or name in leave_out:  # tied: the embedding is stored once
            continue
        array = tensor.detach().float().numpy()
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module = rest.removesuffix(".weight")
            if module == "self_attn.q_proj":
                array = _interleave_rotary_halves(array, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                array = _interleave_rotary_halves(array, config.num_key_value_heads)
            name = f"blk.{layer}.{_LAYER_NAMES[module]}.weight"
        else:
            name = _GLOBAL_NAMES[name]
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
