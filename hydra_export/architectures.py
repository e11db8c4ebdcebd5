"""Registry of supported base-model architectures.

Each entry names the transformers classes the project builds on: the decoder layer
(used for the Hydra++ prefix layer), its RMSNorm and its rotary embedding. Adding a
Llama-like family is one entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class ArchitectureSpec:
    model_type: str  # the `model_type` of the Hugging Face config
    modeling_module: str  # where the family's classes live
    class_prefix: str  # "Llama" -> LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    def _class(self, suffix: str) -> type:
        return getattr(importlib.import_module(self.modeling_module), self.class_prefix + suffix)

    @property
    def decoder_layer_class(self) -> type:
        return self._class("DecoderLayer")

    @property
    def rms_norm_class(self) -> type:
        return self._class("RMSNorm")

    @property
    def rotary_embedding_class(self) -> type:
        return self._class("RotaryEmbedding")


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    # Llama 2/3, Vicuna, SmolLM2 and other Llama-family checkpoints (grouped-query attention included).
    "llama": ArchitectureSpec("llama", "transformers.models.llama.modeling_llama", "Llama"),
    "mistral": ArchitectureSpec("mistral", "transformers.models.mistral.modeling_mistral", "Mistral"),
    "qwen2": ArchitectureSpec("qwen2", "transformers.models.qwen2.modeling_qwen2", "Qwen2"),
}


def architecture_for(model_type: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported; supported model_type values are "
            f"{', '.join(sorted(ARCHITECTURES))}. Llama-like families can be added in "
            "hydra_export/architectures.py"
        ) from None
