"""Sampling settings and the sampler shared by the reference decoder and the engines.

Both sides draw one uniform number per emitted root token (prefill, then each step) from
a seeded numpy generator and sample by inverse CDF, so a seeded run of the engines can
be checked token for token against the PyTorch reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GenerationInputError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy (lossless); > 0: typical acceptance
    posterior_threshold: float = 0.09  # epsilon of typical acceptance
    posterior_alpha: float = 0.3  # alpha of typical acceptance (usually sqrt(epsilon))

    def __post_init__(self):
        if self.temperature < 0:
            raise GenerationInputError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def engine_feeds(self, uniform: float) -> dict[str, np.ndarray]:
        """The scalar inputs of the sampling graphs."""
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
