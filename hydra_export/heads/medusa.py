"""Medusa heads (Cai et al., 2024): independent heads on the last hidden state. The baseline."""

from .draft_heads import DraftHeads


class MedusaHeads(DraftHeads):
    kind = "medusa"
    sequential = False
