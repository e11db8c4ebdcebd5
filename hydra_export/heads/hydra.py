"""Hydra heads (Ankner et al., 2024): head k also sees the tokens speculated before it."""

from .draft_heads import DraftHeads


class HydraHeads(DraftHeads):
    kind = "hydra"
    sequential = True
