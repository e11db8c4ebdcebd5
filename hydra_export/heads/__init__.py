"""Draft heads: Medusa, Hydra and Hydra++ behind one interface."""

from .config import HeadsConfig
from .draft_heads import BaseProjections, DraftHeads
from .registry import HEAD_TYPES, build_heads, heads_config_for

__all__ = ["BaseProjections", "DraftHeads", "HEAD_TYPES", "HeadsConfig", "build_heads", "heads_config_for"]
