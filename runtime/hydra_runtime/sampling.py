"""Sampling settings and the sampler shared by the reference decoder and the engines.

Sampled decoding is speculative sampling over the tree's candidates (acceptance.py,
``speculative_sampling_ok``): its output is distributed exactly as the base model's own
sampling at that temperature. Every engine call takes one uniform number per verified row
(``random_uniforms`` [V], V = the tree's drafted + chain nodes) from a seeded numpy generator:
row r >= 1's acceptance draw, and row 0's for the token sampled after the accepted path (by
inverse CDF). The reference decoder draws the same numbers in the same order, so a seeded run
of the engines can be checked token for token against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .engine import RANDOM_UNIFORMS, TEMPERATURE
from .errors import GenerationInputError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy (lossless); > 0: sampled, distributed as the base model's sampling

    def __post_init__(self):
        value = self.temperature
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise GenerationInputError(f"temperature must be a finite number >= 0, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def engine_feeds(self, uniforms: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's sampling inputs; ``uniforms`` [V] (unused when greedy: zeros will do)."""
        return {
            TEMPERATURE: np.array(self.temperature, dtype=np.float32),
            RANDOM_UNIFORMS: np.asarray(uniforms, dtype=np.float32),
        }


def greedy_feeds(verified_nodes: int) -> dict[str, np.ndarray]:
    """Sampling inputs of a greedy call on an engine whose tree verifies ``verified_nodes`` rows."""
    return SamplingConfig().engine_feeds(np.zeros(verified_nodes, dtype=np.float32))


def inverse_cdf(probs: np.ndarray, uniform: float) -> int:
    """The first index whose cumulative probability reaches ``uniform`` (of the total). probs: [V]."""
    cdf = np.cumsum(probs)
    return int(min(np.sum(cdf < uniform * cdf[-1]), probs.shape[0] - 1))
