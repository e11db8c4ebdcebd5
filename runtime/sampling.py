"""Sampling settings shared by the reference decoder and the runtime's API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy (lossless); > 0: typical acceptance
    posterior_threshold: float = 0.09  # epsilon of typical acceptance
    posterior_alpha: float = 0.3  # alpha of typical acceptance (usually sqrt(epsilon))
