"""Sampling settings and the sampler shared by the reference decoder and the engines.

Both sides draw one uniform number per emitted root token (prefill, then each step) from
a seeded numpy generator and sample by inverse CDF, so a seeded run of the engines can
be checked token for token against the PyTorch reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GenerationInputError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy (lossless); > 0: typical acceptance
    posterior_threshold: float = 0.09  # epsilon of typical acceptance
    posterior_alpha: float = 0.3  # alpha of typical acceptance (usually sqrt(epsilon))

    def __post_init__(self):
        for name, low in (("temperature", 0.0), ("posterior_threshold", 0.0), ("posterior_alpha", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
                raise GenerationInputError(f"{name} must be a finite number >= {low:g}, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def engine_feeds(self, uniform: float) -> dict[str, np.ndarray]:
        """The engine's sampling inputs (temperature 0: greedy; the rest is then unused)."""
        return {
            "temperature": np.array(self.temperature, dtype=np.float32),
            "posterior_threshold": np.array(self.posterior_threshold, dtype=np.float32),
            "posterior_alpha": np.array(self.posterior_alpha, dtype=np.float32),
            "random_uniform": np.array(uniform, dtype=np.float32),
        }


def inverse_cdf(probs: np.ndarray, uniform: float) -> int:
    """The first index whose cumulative probability reaches ``uniform`` (of the total). probs: [V]."""
    cdf = np.cumsum(probs)
    return int(min(np.sum(cdf < uniform * cdf[-1]), probs.shape[0] - 1))
