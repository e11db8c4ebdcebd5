"""The one configuration type every head kind is built from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadsConfig:
    kind: str  # "medusa" | "hydra" | "hydra++" (see heads.registry.HEAD_TYPES)
    num_heads: int  # head k (0-based) predicts the token k+2 positions ahead of the hidden state
    num_layers: int  # residual blocks per head
    hidden_size: int
    vocab_size: int
    own_lm_head: bool = False  # False: project with the base model's LM head (keeps heads small)
    lm_head_bias: bool = False  # only with own_lm_head; the Hydra reference checkpoints have one
    # The reference repositories build a head's repeated residual blocks as `[Block(...)] * n`,
    # i.e. one module used n times. True reproduces that deliberately so their checkpoints load.
    shared_blocks: bool = False
    dropout: float = 0.0  # training only
    # > 0: heads draft only among this many tokens (those they were trained on, stored as the
    # `draft_vocab` buffer). Drafting then projects onto a slice of the LM head, which is most
    # of a draft's cost; verification still uses the whole vocabulary, so output is unchanged.
    draft_vocab_size: int = 0
    base_model: str = ""  # identity of the base model the heads were trained for

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadsConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
