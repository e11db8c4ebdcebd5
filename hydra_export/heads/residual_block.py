"""The residual MLP block all head kinds stack."""

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``skip(x) + silu(linear(x))``; ``skip`` is the identity unless the width changes.

    The linear layer's weight starts at zero, so an untrained block is ``x + silu(bias)``:
    nearly a pass-through, as Medusa and Hydra initialise their heads.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.skip = nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return self.skip(x) + nn.functional.silu(self.linear(x))
