"""Head kinds by name, and their defaults."""

from __future__ import annotations

from ..errors import HydraExportError
from .config import HeadsConfig
from .draft_heads import DraftHeads
from .hydra import HydraHeads
from .hydra_plus_plus import HydraPlusPlusHeads
from .medusa import MedusaHeads

HEAD_TYPES: dict[str, type[DraftHeads]] = {
    MedusaHeads.kind: MedusaHeads,
    HydraHeads.kind: HydraHeads,
    HydraPlusPlusHeads.kind: HydraPlusPlusHeads,
}

# Residual blocks per head when not given: Hydra++ uses deeper (4-layer) heads.
DEFAULT_NUM_LAYERS = {"medusa": 1, "hydra": 1, "hydra++": 4}


def head_class(kind: str) -> type[DraftHeads]:
    try:
        return HEAD_TYPES[kind]
    except KeyError:
        raise HydraExportError(
            f"unknown head kind {kind!r}; choose one of {', '.join(HEAD_TYPES)}"
        ) from None


def heads_config_for(
    kind: str,
    base_config,
    num_heads: int = 4,
    num_layers: int | None = None,
    own_lm_head: bool = False,
    base_model: str = "",
    dropout: float = 0.0,
) -> HeadsConfig:
    head_class(kind)
    return HeadsConfig(
        kind=kind,
        num_heads=num_heads,
        num_layers=num_layers if num_layers is not None else DEFAULT_NUM_LAYERS[kind],
        hidden_size=base_config.hidden_size,
        vocab_size=base_config.vocab_size,
        own_lm_head=own_lm_head,
        base_model=base_model,
        dropout=dropout,
    )


def build_heads(config: HeadsConfig, base_config) -> DraftHeads:
    if config.hidden_size != base_config.hidden_size or config.vocab_size != base_config.vocab_size:
        raise HydraExportError(
            f"heads were made for hidden size {config.hidden_size} and vocabulary {config.vocab_size}, "
            f"but the base model has {base_config.hidden_size} and {base_config.vocab_size}; "
            "use heads trained for this base model"
        )
    return head_class(config.kind)(config, base_config).eval()
